#!/usr/bin/env python3
"""teeproxy vs nginx benchmark: one run starts a fast loopback backend, nginx as a
TLS-terminating reverse proxy and teeproxy in front of it, measures

  (a) small responses over keep-alive TLS        wrk -t2 -c50 /small     req/s, p50, p99
  (b) one full TLS handshake per request         wrk ... Connection: close  req/s
  (c) 1 MiB responses                            wrk /1m                 MiB/s
  (d) SSE delivery delay at 50 events/s          asyncio client          added p50/p99
  (e) memory per open idle stream                2,000 streams           KiB/stream

and writes a Markdown report to bench/RESULTS.md. See bench/README.md.

    /tmp/venv/bin/python bench/run.py            # full run, ~4 minutes
    /tmp/venv/bin/python bench/run.py --quick    # smoke run, ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import math
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clients
import configs
import procs
import wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NGINX = "nginx"
WRK = "wrk"
PROXIES = ("nginx", "teeproxy")
T = TypeVar("T")

TARGETS = {
    "a": ("req/s ratio", ">= 0.5 of nginx"),
    "b": ("req/s ratio", ">= 0.7 of nginx"),
    "c": ("MiB/s ratio", ">= 0.8 of nginx"),
    "d": ("added p99 delay", "<= 2 ms"),
    "e": ("KiB per idle stream", "<= 40 KiB"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- options


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark teeproxy against nginx as TLS-terminating reverse proxies.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk test [15]")
    p.add_argument("--workers", type=int, default=1, help="worker processes of each proxy")
    p.add_argument("--backend-workers", type=int, default=1, help="backend nginx workers")
    p.add_argument("--connections", type=int, default=50, help="wrk connections")
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--quick", action="store_true", help="short smoke run (~1 minute)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also profile teeproxy (workers=1 for both proxies) with py-spy during an "
        "extra run of test (a); writes bench/profile_a.txt",
    )
    p.add_argument(
        "--proxies",
        default=",".join(PROXIES),
        help="comma-separated subset of nginx,teeproxy to run",
    )
    p.add_argument("--tests", default="abcde", help="subset of tests to run, e.g. 'ade'")
    p.add_argument("--idle-streams", type=int, default=2000, help="streams for test (e)")
    p.add_argument("--sse-streams", type=int, default=20, help="concurrent streams for (d)")
    p.add_argument("--sse-events", type=int, default=50, help="events per stream per round")
    p.add_argument(
        "--sse-rounds", type=int, default=None, help="rounds of (d) over all paths [10; quick 1]"
    )
    p.add_argument("--sse-rate", type=float, default=50.0, help="events per second per stream")
    p.add_argument(
        "--teeproxy-cmd",
        default=None,
        help="command that starts teeproxy (before 'serve --config FILE'); default: the "
        "teeproxy console script next to this Python, else 'python -m proxy.cli'",
    )
    p.add_argument(
        "--nginx-resumption",
        choices=("on", "off"),
        default="on",
        help="TLS session tickets in the nginx proxy (its default is on; teeproxy resumes "
        "sessions too). 'off' makes every (b) connection to nginx a full handshake",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for the machine to be >= 90%% idle (other "
        "work running at the same time distorts every number)",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling niceness for this run and everything it starts (e.g. -10, as "
        "root, to shield the measurement from other work on a shared machine)",
    )
    p.add_argument("--ready-timeout", type=float, default=20.0)
    p.add_argument("--output", type=Path, default=BENCH_DIR / "RESULTS.md")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (debugging)")
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 15.0
    if args.sse_rounds is None:
        args.sse_rounds = 1 if args.quick else 10
    args.warmup = 1.0 if args.quick else 2.0
    args.proxies = [x.strip() for x in args.proxies.split(",") if x.strip()]
    unknown = set(args.proxies) - set(PROXIES)
    if unknown:
        p.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    if set(args.tests) - set("abcde"):
        p.error("--tests takes letters from 'abcde'")
    if args.profile and args.workers != 1:
        log("--profile: using workers=1 for both proxies")
        args.workers = 1
    if args.backend_workers < 1:
        p.error("--backend-workers must be >= 1")
    if args.workers < 1:
        p.error("--workers must be >= 1 (nginx and teeproxy need the same explicit count)")
    return args


def teeproxy_command(args: argparse.Namespace) -> list[str]:
    if args.teeproxy_cmd:
        return shlex.split(args.teeproxy_cmd)
    script = Path(sys.executable).parent / "teeproxy"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "proxy.cli"]


# --------------------------------------------------------------------------- results


@dataclass
class MemResult:
    before: procs.Memory
    after: procs.Memory
    idle: clients.IdleResult

    @property
    def kib_per_stream_pss(self) -> float:
        n = self.idle.established
        return (self.after.pss_kib - self.before.pss_kib) / n if n else float("nan")

    @property
    def kib_per_stream_rss(self) -> float:
        n = self.idle.established
        return (self.after.rss_kib - self.before.rss_kib) / n if n else float("nan")


@dataclass
class Results:
    wrk: dict[tuple[str, str], wrk.WrkResult] = field(default_factory=dict)  # (test, target)
    sse_rounds: dict[str, list[clients.SSEResult]] = field(default_factory=dict)  # target
    mem: dict[str, MemResult] = field(default_factory=dict)
    resumption: dict[str, tuple[int, int]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)  # target -> messages
    notes: list[str] = field(default_factory=list)
    profile_file: Path | None = None

    @property
    def sse(self) -> dict[str, clients.SSEResult]:
        """Each path's SSE samples, all rounds pooled."""
        return {name: clients.SSEResult.pooled(r) for name, r in self.sse_rounds.items()}

    def sse_round_p99_added(self, name: str) -> list[float]:
        """Per round: p99 delay through name - p99 delay direct in the same round."""
        base, mine = self.sse_rounds.get("direct"), self.sse_rounds.get(name)
        if not base or not mine or len(base) != len(mine):
            return []
        return [
            m.summary()["delay_p99"] - b.summary()["delay_p99"]
            for m, b in zip(mine, base, strict=True)
        ]

    def error(self, target: str, msg: str) -> None:
        log(f"ERROR [{target}] {msg}")
        self.errors.setdefault(target, []).append(msg)


# --------------------------------------------------------------------------- processes


@dataclass
class Target:
    name: str
    port: int
    ctx: ssl.SSLContext | None
    proc: procs.Proc | None  # the process whose tree is measured (None: not measured)

    @property
    def url(self) -> str:
        scheme = "http" if self.ctx is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"


def require_tools(need_pyspy: bool) -> str | None:
    missing = [tool for tool in (NGINX, WRK) if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"error: {', '.join(missing)} not found on PATH; install with\n"
            "    apt-get install nginx-light wrk"
        )
    if need_pyspy:
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            log("py-spy not found: skipping --profile (pip install py-spy into the venv)")
            return None
        return pyspy
    return None


def read_listening_port(proc: procs.Proc, timeout: float) -> int:
    """The port printed as 'LISTENING <port>' by sse_server.py."""
    assert proc.popen.stdout is not None  # noqa: S101 - started with stdout_pipe
    sel = selectors.DefaultSelector()
    sel.register(proc.popen.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if sel.select(timeout=0.2):
                line = proc.popen.stdout.readline().decode()
                if line.startswith("LISTENING "):
                    return int(line.split()[1])
                if not line:
                    break
            if not proc.alive():
                break
    finally:
        sel.close()
    raise RuntimeError(f"SSE server did not start:\n{proc.log_tail()}")


def start_nginx(name: str, prefix: Path, conf: Path, logs: Path) -> procs.Proc:
    check = subprocess.run(
        [NGINX, "-t", "-q", "-e", str(prefix / "error.log"), "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed for {name}:\n{check.stderr}")
    return procs.Proc(
        name,
        [
            NGINX,
            "-e",
            str(prefix / "error.log"),
            "-p",
            str(prefix),
            "-c",
            str(conf),
            "-g",
            "daemon off;",
        ],
        logs / f"{name}.log",
    )


def describe_failure(proc: procs.Proc, extra_log: Path | None = None) -> str:
    text = proc.log_tail()
    if extra_log is not None and extra_log.exists():
        text += "\n" + "\n".join(extra_log.read_text(errors="replace").splitlines()[-20:])
    return text.strip() or "(no output)"


# --------------------------------------------------------------------------- tests


def proxy_cpu(target: Target) -> float:
    return procs.cpu_seconds(target.proc.pid) if target.proc is not None else 0.0


def ensure_alive(target: Target) -> None:
    if target.proc is not None and not target.proc.alive():
        raise RuntimeError(
            f"{target.name} exited with {target.proc.popen.returncode}:\n"
            + describe_failure(target.proc)
        )


def run_wrk(
    target: Target, path: str, args: argparse.Namespace, headers: tuple[str, ...] = ()
) -> wrk.WrkResult:
    ensure_alive(target)
    cpu0 = proxy_cpu(target)
    result = wrk.run(
        target.url + path,
        duration=args.duration,
        threads=args.threads,
        connections=args.connections,
        headers=headers,
        wrk=WRK,
    )
    result.cpu_s = proxy_cpu(target) - cpu0
    ensure_alive(target)
    return result


def guarded(results: Results, target: str, what: str, fn: Callable[[], T]) -> T | None:
    """Run one measurement; a failure is recorded and the run goes on."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - any failure of one test is reported, not fatal
        detail = "".join(traceback.format_exception_only(exc)).strip()
        results.error(target, f"{what}: {detail}")
        return None


def warm_up(target: Target, args: argparse.Namespace) -> None:
    wrk.run(target.url + "/small", duration=args.warmup, threads=1, connections=8, wrk=WRK)
    clients.run_async(clients.sse_latency(target.port, target.ctx, 2, 3, 0.01))


def test_memory(target: Target, args: argparse.Namespace) -> MemResult:
    assert target.proc is not None  # noqa: S101
    pid = target.proc.pid
    time.sleep(1.0)
    before = procs.memory(pid)

    async def measure() -> object:
        # Let the proxy settle (buffers allocated, backend streams established).
        await asyncio.sleep(2.0)
        return procs.memory(pid)

    idle = clients.run_async(
        clients.idle_streams(target.port, target.ctx, args.idle_streams, measure)
    )
    if idle.established < args.idle_streams:
        raise RuntimeError(
            f"only {idle.established}/{args.idle_streams} idle streams established in "
            f"{idle.open_seconds:.0f} s; failures: {idle.errors}"
        )
    after = idle.measurement
    if not isinstance(after, procs.Memory):
        raise RuntimeError("no memory measurement")
    ensure_alive(target)
    time.sleep(1.0)  # let the proxy and the backend tear the streams down
    return MemResult(before=before, after=after, idle=idle)


def test_sse(target: Target, args: argparse.Namespace) -> clients.SSEResult:
    ensure_alive(target)
    result = clients.run_async(
        clients.sse_latency(
            target.port, target.ctx, args.sse_streams, args.sse_events, 1.0 / args.sse_rate
        )
    )
    if result.errors:
        raise RuntimeError(f"{len(result.errors)} stream errors, first: {result.errors[0]}")
    if result.events_received != result.events_expected:
        raise RuntimeError(f"received {result.events_received}/{result.events_expected} events")
    return result


def profile_a(target: Target, args: argparse.Namespace, pyspy: str, tmp: Path) -> Path:
    """An extra run of (a) with py-spy attached to teeproxy; top frames to a text file."""
    assert target.proc is not None  # noqa: S101
    raw = tmp / "profile.folded"
    duration = max(5, round(args.duration))
    spy = procs.Proc(
        "py-spy",
        [
            *(pyspy, "record", "--pid", str(target.proc.pid), "--subprocesses"),
            *("--rate", "100", "--format", "raw"),
            *("--duration", str(duration), "-o", str(raw)),
        ],
        tmp / "py-spy.log",
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        res = wrk.run(
            target.url + "/small",
            duration=duration - 2,
            threads=args.threads,
            connections=args.connections,
            wrk=WRK,
        )
        spy.popen.wait(timeout=duration + 30)
    finally:
        spy.stop(timeout=5, sig=signal.SIGINT)
    if not raw.exists():
        raise RuntimeError(f"py-spy wrote no profile:\n{spy.log_tail()}")
    out = BENCH_DIR / "profile_a.txt"
    out.write_text(
        summarize_folded(
            raw.read_text(),
            header=f"py-spy profile of teeproxy (workers=1) during test (a): "
            f"{res.requests_per_s:.0f} req/s while sampled (100 Hz)\n",
        )
    )
    shutil.copy(raw, BENCH_DIR / "profile_a.folded")
    return out


_IDLE_LEAF = re.compile(r"^_worker \(concurrent/futures/thread\.py:\d+\)$")
_PROCESS_FRAME = re.compile(r'^(?:process \d+:"[^"]*"(?:;|$))+')


def summarize_folded(text: str, header: str, top: int = 40) -> str:
    """Self and inclusive sample counts per frame from py-spy's collapsed-stack output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        # With --subprocesses the stack starts with 'process PID:"CMDLINE"' frames (supervisor,
        # then worker), whose command lines may contain ';'.
        stack = _PROCESS_FRAME.sub("", stack)
        frames = [f for f in stack.split(";") if f]
        if not frames or _IDLE_LEAF.match(frames[-1]):
            idle += count
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    if total == 0:
        return header + "no samples (was teeproxy busy?)\n"
    lines = [
        header,
        f"samples: {total} (left out: {idle} of idle thread-pool threads waiting for work, "
        "which py-spy does not recognise as idle)",
        "",
        f"top {top} frames by own (self) time:",
    ]
    lines += [f"{100 * n / total:6.2f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", f"top {top} frames by inclusive time:"]
    lines += [f"{100 * n / total:6.2f}%  {frame}" for frame, n in incl.most_common(top)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0 or math.isnan(num) or math.isnan(den):
        return None
    return num / den


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**NOT met**")


def run_cmd_version(cmd: list[str], *, require_ok: bool = False) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({type(exc).__name__})"
    text = (proc.stdout + proc.stderr).strip().splitlines()
    if not text or (require_ok and proc.returncode != 0):
        return "unavailable"
    return text[0]


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def environment(args: argparse.Namespace) -> list[tuple[str, str]]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError, IndexError, ValueError):
        kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
        mem = f"{kib / 1024**2:.1f} GiB"

    def pkg(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    tee_version = run_cmd_version([*teeproxy_command(args), "--version"], require_ok=True)
    if tee_version.startswith("unavailable"):
        tee_version = f"{pkg('teeproxy')} (package metadata)"
    git = ["git", "--no-optional-locks", "-C", str(REPO)]  # read-only: never touch the index
    commit = run_cmd_version([*git, "rev-parse", "--short", "HEAD"])
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        diff = subprocess.run(
            [*git, "diff", "--quiet", "HEAD", "--", "proxy", "certmgr"],
            capture_output=True,
            timeout=20,
            check=False,
        )
        if diff.returncode == 1:
            commit += " + uncommitted changes in proxy/ or certmgr/"
    return [
        ("machine", f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {cpu}"),
        ("memory / kernel", f"{mem}, Linux {platform.release()}"),
        ("load average before the run", loadavg()),
        ("nginx", run_cmd_version([NGINX, "-v"])),
        ("wrk", run_cmd_version([WRK, "-v"]).split(" Copyright")[0]),
        ("teeproxy", f"{tee_version}, repo commit {commit}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("openssl (python)", ssl.OPENSSL_VERSION),
        ("aiohttp / uvloop", f"{pkg('aiohttp')} / {pkg('uvloop')}"),
    ]


def render(results: Results, args: argparse.Namespace, env: list[tuple[str, str]]) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    cmd = " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv])
    w = results.wrk
    out: list[str] = [
        "# teeproxy vs nginx benchmark results",
        "",
        f"- date: {now}",
        *(f"- {k}: {v}" for k, v in env),
        f"- command: `{cmd}`",
        f"- settings: workers={args.workers} per proxy, backend nginx workers="
        f"{args.backend_workers}, wrk -t{args.threads} -c{args.connections} "
        f"-d{round(args.duration)}s, SSE {args.sse_rounds} rounds x "
        f"{args.sse_streams} streams x {args.sse_events} events at {args.sse_rate:g}/s, "
        f"{args.idle_streams} idle streams, nginx TLS session tickets {args.nginx_resumption}, "
        f"niceness {os.getpriority(os.PRIO_PROCESS, 0)}",
        "",
        "## Summary",
        "",
        "| test | metric | nginx | teeproxy | teeproxy/nginx | target | status |",
        "|---|---|---:|---:|---:|---|---|",
    ]

    def wrk_val(test: str, target: str, attr: str) -> float | None:
        r = w.get((test, target))
        return getattr(r, attr) if r is not None else None

    # (a)
    for attr, label, digits in (
        ("requests_per_s", "req/s", 0),
        ("p50_ms", "p50 latency ms", 2),
        ("p99_ms", "p99 latency ms", 2),
    ):
        n, t = wrk_val("a", "nginx", attr), wrk_val("a", "teeproxy", attr)
        r = _ratio(t, n)
        target_s, status = "", ""
        if attr == "requests_per_s":
            target_s, status = ">= 0.5", _status(None if r is None else r >= 0.5)
        out.append(
            f"| (a) small, keep-alive TLS | {label} | {_fmt(n, digits)} | {_fmt(t, digits)} | "
            f"{_fmt(r, 2)} | {target_s} | {status} |"
        )
    # (b)
    n, t = wrk_val("b", "nginx", "requests_per_s"), wrk_val("b", "teeproxy", "requests_per_s")
    r = _ratio(t, n)
    out.append(
        f"| (b) new TLS handshake per request | req/s | {_fmt(n, 0)} | {_fmt(t, 0)} | "
        f"{_fmt(r, 2)} | >= 0.7 | {_status(None if r is None else r >= 0.7)} |"
    )
    # (c)
    n, t = wrk_val("c", "nginx", "transfer_mib_s"), wrk_val("c", "teeproxy", "transfer_mib_s")
    r = _ratio(t, n)
    out.append(
        f"| (c) 1 MiB responses | MiB/s | {_fmt(n, 0)} | {_fmt(t, 0)} | {_fmt(r, 2)} | "
        f">= 0.8 | {_status(None if r is None else r >= 0.8)} |"
    )
    # (d)
    base = results.sse.get("direct")
    added: dict[str, dict[str, float | None]] = {}
    for name in PROXIES:
        s = results.sse.get(name)
        if s is None or base is None:
            added[name] = {"p50": None, "p99": None, "ttfb50": None}
            continue
        ss, bs = s.summary(), base.summary()
        added[name] = {
            "p50": ss["delay_p50"] - bs["delay_p50"],
            "p99": ss["delay_p99"] - bs["delay_p99"],
            "ttfb50": ss["ttfb_p50"] - bs["ttfb_p50"],
        }
    for key, label in (("p50", "added p50 delay ms"), ("p99", "added p99 delay ms")):
        n_v, t_v = added["nginx"][key], added["teeproxy"][key]
        status, tgt = "", ""
        if key == "p99":
            tgt, status = "<= 2 ms", _status(None if t_v is None else t_v <= 2.0)
        out.append(
            f"| (d) SSE 50 events/s | {label} | {_fmt(n_v, 3)} | {_fmt(t_v, 3)} | | "
            f"{tgt} | {status} |"
        )
    if args.sse_rounds > 1:
        cells = []
        for name in ("nginx", "teeproxy"):
            per_round = results.sse_round_p99_added(name)
            cells.append(
                f"{statistics.median(per_round):.3f} ({min(per_round):.2f} to {max(per_round):.2f})"
                if per_round
                else "n/a"
            )
        out.append(
            f"| (d) SSE 50 events/s | added p99 delay ms, median of {args.sse_rounds} rounds "
            f"(range) | {cells[0]} | {cells[1]} | | | |"
        )
    n_v, t_v = added["nginx"]["ttfb50"], added["teeproxy"]["ttfb50"]
    out.append(
        f"| (d) SSE 50 events/s | added p50 time to first event ms | {_fmt(n_v, 3)} | "
        f"{_fmt(t_v, 3)} | | | |"
    )
    # (e)
    n_m, t_m = results.mem.get("nginx"), results.mem.get("teeproxy")
    n_k = n_m.kib_per_stream_pss if n_m else None
    t_k = t_m.kib_per_stream_pss if t_m else None
    out.append(
        f"| (e) idle streams | KiB per stream (PSS) | {_fmt(n_k)} | {_fmt(t_k)} | "
        f"{_fmt(_ratio(t_k, n_k), 2)} | <= 40 KiB | "
        f"{_status(None if t_k is None else t_k <= 40.0)} |"
    )

    # Raw numbers.
    out += ["", "## Raw numbers", "", "### wrk (a) (b) (c)", ""]
    out += [
        "| test | target | req/s | MiB/s | p50 ms | p99 ms | requests | errors "
        "| proxy CPU (cores) | proxy CPU ms/request |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for (test, target), wr in sorted(w.items()):
        errs = ", ".join(f"{k} {v}" for k, v in wr.socket_errors.items() if v)
        if wr.non_2xx:
            errs = (errs + ", " if errs else "") + f"non-2xx {wr.non_2xx}"
        cpu = wr.cpu_s > 0
        out.append(
            f"| ({test}) | {target} | {_fmt(wr.requests_per_s, 0)} | "
            f"{_fmt(wr.transfer_mib_s, 1)} | {_fmt(wr.p50_ms, 2)} | {_fmt(wr.p99_ms, 2)} | "
            f"{wr.requests:,} | {errs or '0'} | "
            f"{_fmt(wr.cpu_utilisation, 2) if cpu else '-'} | "
            f"{_fmt(wr.cpu_ms_per_request, 3) if cpu else '-'} |"
        )
    if results.resumption:
        out += ["", "TLS session resumption offered by the client on reconnect (as wrk does):"]
        for name, (resumed, tried) in results.resumption.items():
            out.append(f"- {name}: resumed {resumed} of {tried} reconnections")
    out += ["", "### SSE (d)", ""]
    out += [
        "| path | streams (all rounds) | events | TTFB p50 ms | TTFB p99 ms | delay p50 ms | "
        "delay p99 ms | delay max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in results.sse.items():
        sm = s.summary()
        out.append(
            f"| {name} | {s.streams} | {s.events_received:,} | {_fmt(sm['ttfb_p50'], 3)} | "
            f"{_fmt(sm['ttfb_p99'], 3)} | {_fmt(sm['delay_p50'], 3)} | "
            f"{_fmt(sm['delay_p99'], 3)} | {_fmt(sm['delay_max'], 3)} |"
        )
    out += [
        "",
        "Delay = arrival time at the client - timestamp written by the SSE server just "
        "before sending. `direct` = plain HTTP to the backend nginx (which fronts the SSE "
        "server exactly as for the proxies); `direct-sse` = plain HTTP to the Python SSE "
        "server itself. Added delay = proxy percentile - `direct` percentile.",
    ]
    out += ["", "### Memory (e)", ""]
    out += [
        "| proxy | processes | streams | open s | RSS before KiB | RSS after KiB | "
        "PSS before KiB | PSS after KiB | KiB/stream (PSS) | KiB/stream (RSS) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in results.mem.items():
        out.append(
            f"| {name} | {m.after.processes} | {m.idle.established:,} | "
            f"{m.idle.open_seconds:.1f} | {m.before.rss_kib:,} | {m.after.rss_kib:,} | "
            f"{m.before.pss_kib:,} | {m.after.pss_kib:,} | {_fmt(m.kib_per_stream_pss)} | "
            f"{_fmt(m.kib_per_stream_rss)} |"
        )
    if results.profile_file is not None:
        out += ["", f"Profile of test (a): `{results.profile_file.relative_to(REPO)}`"]
    if results.errors:
        out += ["", "## Errors", ""]
        for target, msgs in results.errors.items():
            for msg in msgs:
                out += [f"- {target}:", "", "```", msg, "```"]
    if results.notes:
        out += ["", "## Notes", ""]
        out += [f"- {n}" for n in results.notes]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- main


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Reset|Timeout)\w*: ")
_LOG_PROBLEMS = (" ERROR ", " CRITICAL ", "Traceback", "[error]", "[crit]", "[alert]", "[emerg]")


def scan_log(name: str, path: Path) -> str | None:
    """A note on error lines in a process's log (the benchmark should cause none)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    bad = [line for line in lines if any(marker in line for marker in _LOG_PROBLEMS)]
    if not bad:
        return None
    tracebacks = sum("Traceback" in line for line in lines)
    # Group by message with numbers (timestamps, PIDs, ports) blanked; exception lines
    # ("pkg.SomeError: text", the last line of a traceback) are counted too.
    kinds = Counter(
        re.sub(r"\d+", "N", line.strip())[:160]
        for line in lines
        if (any(m in line for m in _LOG_PROBLEMS) and "Traceback" not in line)
        or _EXC_LINE.match(line)
    )
    common = "; ".join(f"{n}x `{text}`" for text, n in kinds.most_common(4))
    return (
        f"{name}: {len(bad) - tracebacks} error lines and {tracebacks} tracebacks in its "
        f"log; most common: {common}"
    )


def wait_for_idle(limit: float) -> float:
    """Idle fraction of the machine, after waiting up to limit seconds for >= 90%."""
    deadline = time.monotonic() + limit
    idle = procs.idle_fraction(1.0)
    while idle < 0.9 and time.monotonic() < deadline:
        log(f"machine only {100 * idle:.0f}% idle; waiting (--wait-idle)")
        idle = procs.idle_fraction(min(5.0, max(1.0, deadline - time.monotonic())))
    return idle


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pyspy = require_tools(args.profile)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if args.nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError as exc:
            sys.exit(f"error: cannot set niceness {args.nice}: {exc}")
    nofile = procs.raise_nofile(max(65536, args.idle_streams * 8 + 4096))
    if nofile < args.idle_streams * 3 + 1024:
        sys.exit(f"error: RLIMIT_NOFILE is {nofile}, too low for {args.idle_streams} streams")
    conns = max(4096, args.idle_streams * 2 + 1024)  # nginx worker_connections

    idle = wait_for_idle(args.wait_idle)
    log(f"machine {100 * idle:.0f}% idle before the run")
    started = time.monotonic()
    busy0, own0 = procs.machine_busy_seconds(), procs.own_cpu_seconds()
    tmp = Path(tempfile.mkdtemp(prefix="teeproxy-bench-"))
    running: list[procs.Proc] = []
    results = Results()
    env = environment(args)
    try:
        logs = tmp / "logs"
        logs.mkdir()
        certs = configs.make_certs(tmp)
        ctx = clients.client_context(str(certs.ca_file))

        # Backend: the Python SSE server behind a backend nginx that also serves /small, /1m.
        sse = procs.Proc(
            "sse-server",
            [sys.executable, str(BENCH_DIR / "sse_server.py"), "--port", "0"],
            logs / "sse-server.log",
            stdout_pipe=True,
        )
        running.append(sse)
        sse_port = read_listening_port(sse, 10.0)
        backend_port = procs.free_port()
        bprefix = tmp / "backend-nginx"
        bprefix.mkdir()
        bconf = configs.backend_nginx_conf(
            bprefix,
            port=backend_port,
            sse_port=sse_port,
            workers=args.backend_workers,
            connections=conns,
        )
        backend = start_nginx("backend-nginx", bprefix, bconf, logs)
        running.append(backend)
        clients.wait_ready(backend_port, None, args.ready_timeout, backend.alive)
        clients.wait_ready(backend_port, None, 5, backend.alive, path="/sse?events=1&interval=0")
        log(f"backend nginx on :{backend_port}, SSE server on :{sse_port}")

        targets: dict[str, Target] = {
            "direct": Target("direct", backend_port, None, None),
            "direct-sse": Target("direct-sse", sse_port, None, None),
        }
        if "nginx" in args.proxies:
            pprefix = tmp / "proxy-nginx"
            pprefix.mkdir()
            port = procs.free_port()
            pconf = configs.proxy_nginx_conf(
                pprefix,
                port=port,
                backend_port=backend_port,
                workers=args.workers,
                connections=conns,
                cert_file=certs.cert_file,
                key_file=certs.key_file,
                session_resumption=args.nginx_resumption == "on",
            )
            proxy = start_nginx("proxy-nginx", pprefix, pconf, logs)
            running.append(proxy)
            try:
                clients.wait_ready(port, ctx, args.ready_timeout, proxy.alive)
            except (RuntimeError, TimeoutError) as exc:
                results.error("nginx", f"{exc}\n{describe_failure(proxy, pprefix / 'error.log')}")
            else:
                targets["nginx"] = Target("nginx", port, ctx, proxy)
                log(f"nginx proxy on :{port} (pid {proxy.pid})")
        if "teeproxy" in args.proxies:
            port, admin = procs.free_port(), procs.free_port()
            state = tmp / "teeproxy-state"
            state.mkdir()
            toml = configs.teeproxy_toml(
                tmp / "teeproxy.toml",
                state_dir=state,
                port=port,
                admin_port=admin,
                backend_port=backend_port,
                workers=args.workers,
                max_connections=conns * 2,
                cert_file=certs.cert_file,
                key_file=certs.key_file,
            )
            cmd = [*teeproxy_command(args), "serve", "--config", str(toml)]
            try:
                tee = procs.Proc("teeproxy", cmd, logs / "teeproxy.log", cwd=REPO)
            except OSError as exc:
                results.error("teeproxy", f"cannot start {shlex.join(cmd)}: {exc}")
            else:
                running.append(tee)
                try:
                    clients.wait_ready(port, ctx, args.ready_timeout, tee.alive)
                except (RuntimeError, TimeoutError) as exc:
                    results.error("teeproxy", f"{shlex.join(cmd)}: {exc}\n{describe_failure(tee)}")
                else:
                    targets["teeproxy"] = Target("teeproxy", port, ctx, tee)
                    log(f"teeproxy on :{port} (pid {tee.pid})")
        proxies = [targets[n] for n in PROXIES if n in targets]

        for t in proxies:
            guarded(results, t.name, "warm-up", partial(warm_up, t, args))
            res = guarded(
                results,
                t.name,
                "resumption probe",
                partial(clients.resumption_probe, t.port, ctx),
            )
            if res is not None:
                results.resumption[t.name] = res

        if "e" in args.tests:
            for t in proxies:
                log(f"(e) {args.idle_streams} idle streams through {t.name}")
                mem = guarded(results, t.name, "(e) memory", partial(test_memory, t, args))
                if mem is not None:
                    results.mem[t.name] = mem
                    log(f"    {mem.kib_per_stream_pss:.1f} KiB/stream (PSS)")
        if "d" in args.tests:
            # Rounds alternate the paths (rotating the order) so that slow drifts of the
            # machine's state hit the baseline and the proxies alike; samples are pooled.
            sse_paths = [targets["direct-sse"], targets["direct"], *proxies]
            failed: set[str] = set()
            for rnd in range(args.sse_rounds):
                k = rnd % len(sse_paths)
                for t in sse_paths[k:] + sse_paths[:k]:
                    if t.name in failed:
                        continue
                    s = guarded(results, t.name, "(d) SSE", partial(test_sse, t, args))
                    if s is None:
                        failed.add(t.name)
                        results.sse_rounds.pop(t.name, None)
                        continue
                    results.sse_rounds.setdefault(t.name, []).append(s)
            for name, s in results.sse.items():
                sm = s.summary()
                log(
                    f"(d) SSE {name}: delay p50 {sm['delay_p50']:.3f} ms, "
                    f"p99 {sm['delay_p99']:.3f} ms ({s.events_received} events)"
                )
        wrk_tests: list[tuple[str, str, tuple[str, ...], bool]] = [
            ("a", "/small", (), True),
            ("b", "/small", ("Connection: close",), False),
            ("c", "/1m", (), True),
        ]
        for test, path, headers, with_direct in wrk_tests:
            if test not in args.tests:
                continue
            for t in ([targets["direct"]] if with_direct else []) + proxies:
                log(f"({test}) wrk {path} {' '.join(headers)} -> {t.name}")
                r = guarded(
                    results,
                    t.name,
                    f"({test}) wrk",
                    partial(run_wrk, t, path, args, headers),
                )
                if r is not None:
                    results.wrk[(test, t.name)] = r
                    log(
                        f"    {r.requests_per_s:,.0f} req/s, {r.transfer_mib_s:,.1f} MiB/s, "
                        f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, errors {r.error_count}"
                    )
        if args.profile and "teeproxy" in targets:
            if pyspy is None:
                results.notes.append("--profile skipped: py-spy not installed")
            else:
                log("profiling teeproxy under (a) with py-spy")
                results.profile_file = guarded(
                    results,
                    "teeproxy",
                    "profile",
                    partial(profile_a, targets["teeproxy"], args, pyspy, tmp),
                )
    except KeyboardInterrupt:
        log("interrupted; stopping processes")
        results.notes.append("run interrupted")
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        # Setup of the backend failed (per-test failures are handled by guarded()).
        results.error("setup", "".join(traceback.format_exception(exc)).strip())
    finally:
        for proc in reversed(running):
            code = proc.stop(timeout=15.0)
            if code not in (0, -signal.SIGTERM, None):
                results.notes.append(f"{proc.name} exited with status {code}")
        logs_to_scan: list[tuple[str, Path]] = [(p.name, p.log_path) for p in running]
        logs_to_scan += [
            ("backend-nginx error.log", tmp / "backend-nginx" / "error.log"),
            ("proxy-nginx error.log", tmp / "proxy-nginx" / "error.log"),
        ]
        for log_name, log_file in logs_to_scan:
            note = scan_log(log_name, log_file)
            if note:
                results.notes.append(note)
        if args.keep_tmp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    wall = time.monotonic() - started
    foreign = (procs.machine_busy_seconds() - busy0) - (procs.own_cpu_seconds() - own0)
    share = max(0.0, foreign) / (wall * len(os.sched_getaffinity(0)))
    results.notes.append(
        f"wall time of the run: {wall:.0f} s; machine {100 * idle:.0f}% idle just before; "
        f"processes not started by this run used {max(0.0, foreign):.1f} CPU-seconds "
        f"during it ({100 * share:.1f}% of the machine)"
        + (
            ""
            if share <= 0.05
            else (
                ": they ran at lower priority than the benchmark (--nice), but may still "
                "have disturbed it"
                if os.getpriority(os.PRIO_PROCESS, 0) < 0
                else ": **the run was probably disturbed by other work; repeat it on a "
                "quiet machine or with --nice -10**"
            )
        )
    )
    report = render(results, args, env)
    print(report)
    args.output.write_text(report)
    log(f"wrote {args.output}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
