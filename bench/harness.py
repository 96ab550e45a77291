"""What every benchmark test shares: the targets and the results they fill, starting the
backend and the proxies, running wrk against a target while counting the proxy's CPU,
running one measurement without letting its failure end the run, stopping everything
again, and the facts about the machine and the run that the report states.

The tests themselves are in bench_*.py (one module per test, none imports another), the
report in report.py, the command line and the order of the run in run.py.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import re
import selectors
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import clients
import configs
import procs
import wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
NGINX = "nginx"
WRK = "wrk"
PROXIES = ("nginx", "teeproxy")
# Test (f): nginx, and teeproxy with the simulated attestation provider, receipts off / on.
RX_OFF, RX_ON = "teeproxy-off", "teeproxy-on"
RX_TARGETS = ("nginx", RX_OFF, RX_ON)
ALL_TESTS = "abcdefg"
T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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
    # Memory at rest: each proxy's processes after start-up, before any request.
    rest: dict[str, list[procs.ProcessMemory]] = field(default_factory=dict)
    resumption: dict[str, tuple[int, int]] = field(default_factory=dict)
    rx_posts: dict[str, clients.PostResult] = field(default_factory=dict)  # (f1) target
    rx_streams: dict[str, clients.StreamResult] = field(default_factory=dict)  # (f2) target
    rx_checks: list[str] = field(default_factory=list)  # (f) what was checked, and how it went
    # (f) per round: ("f1", target) -> p50 latency; ("f2", target) -> p50 end after last event
    rx_round_p50: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rx_sign_ms: float | None = None  # (f) one signature + header encoding, in this process
    llm: dict[tuple[int, str], Any] = field(default_factory=dict)  # (g) (streams, target)
    llm_one: dict[str, Any] = field(default_factory=dict)  # (g) one-event run per target
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

    def rx_round_added(self, test: str) -> list[float]:
        """Per round of (f1)/(f2): p50 with receipts on - p50 with receipts off."""
        on, off = self.rx_round_p50.get((test, RX_ON)), self.rx_round_p50.get((test, RX_OFF))
        if not on or not off or len(on) != len(off):
            return []
        return [a - b for a, b in zip(on, off, strict=True)]

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
    state_dir: Path | None = None  # teeproxy's

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


def start_teeproxy(
    name: str,
    receipts: bool | None,
    args: argparse.Namespace,
    *,
    tmp: Path,
    backend_port: int,
    max_connections: int,
    certs: configs.Certs,
    ctx: ssl.SSLContext,
    running: list[procs.Proc],
    results: Results,
) -> Target | None:
    """Start one teeproxy (receipts: see configs.teeproxy_toml) and wait until it answers;
    a failure is recorded in results and gives None."""
    port, admin = procs.free_port(), procs.free_port()
    state = tmp / f"{name}-state"
    state.mkdir()
    toml = configs.teeproxy_toml(
        tmp / f"{name}.toml",
        state_dir=state,
        port=port,
        admin_port=admin,
        backend_port=backend_port,
        workers=args.workers,
        max_connections=max_connections,
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        receipts=receipts,
    )
    cmd = [*teeproxy_command(args), "serve", "--config", str(toml)]
    try:
        # Not the repository as working directory: `python -m` puts the working directory
        # first on sys.path, so a --teeproxy-cmd naming another checkout (PYTHONPATH=...)
        # would silently run this checkout's code instead.
        tee = procs.Proc(name, cmd, tmp / "logs" / f"{name}.log", cwd=tmp)
    except OSError as exc:
        results.error(name, f"cannot start {shlex.join(cmd)}: {exc}")
        return None
    running.append(tee)
    try:
        clients.wait_ready(port, ctx, args.ready_timeout, tee.alive)
    except (RuntimeError, TimeoutError) as exc:
        results.error(name, f"{shlex.join(cmd)}: {exc}\n{describe_failure(tee)}")
        return None
    log(f"{name} on :{port} (pid {tee.pid})")
    return Target(name, port, ctx, tee, state_dir=state)


def start_backend(
    args: argparse.Namespace, *, tmp: Path, connections: int, running: list[procs.Proc]
) -> dict[str, Target]:
    """The Python SSE server behind a backend nginx that also serves /small and /1m itself;
    each process goes into running as soon as it exists. Gives the unmeasured plain-HTTP
    targets `direct` (the backend nginx) and `direct-sse` (the SSE server); raises when
    either does not come up (nothing can be measured then)."""
    logs = tmp / "logs"
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
        connections=connections,
    )
    backend = start_nginx("backend-nginx", bprefix, bconf, logs)
    running.append(backend)
    clients.wait_ready(backend_port, None, args.ready_timeout, backend.alive)
    clients.wait_ready(backend_port, None, 5, backend.alive, path="/sse?events=1&interval=0")
    log(f"backend nginx on :{backend_port}, SSE server on :{sse_port}")
    return {
        "direct": Target("direct", backend_port, None, None),
        "direct-sse": Target("direct-sse", sse_port, None, None),
    }


def start_proxy_nginx(
    args: argparse.Namespace,
    *,
    tmp: Path,
    backend_port: int,
    connections: int,
    certs: configs.Certs,
    ctx: ssl.SSLContext,
    running: list[procs.Proc],
    results: Results,
) -> Target | None:
    """Start the nginx proxy and wait until it answers; one that does not answer is recorded
    in results and gives None (a config that nginx -t rejects raises, like the backend's)."""
    pprefix = tmp / "proxy-nginx"
    pprefix.mkdir()
    port = procs.free_port()
    pconf = configs.proxy_nginx_conf(
        pprefix,
        port=port,
        backend_port=backend_port,
        workers=args.workers,
        connections=connections,
        cert_file=certs.cert_file,
        key_file=certs.key_file,
        session_resumption=args.nginx_resumption == "on",
    )
    proxy = start_nginx("proxy-nginx", pprefix, pconf, tmp / "logs")
    running.append(proxy)
    try:
        clients.wait_ready(port, ctx, args.ready_timeout, proxy.alive)
    except (RuntimeError, TimeoutError) as exc:
        results.error("nginx", f"{exc}\n{describe_failure(proxy, pprefix / 'error.log')}")
        return None
    log(f"nginx proxy on :{port} (pid {proxy.pid})")
    return Target("nginx", port, ctx, proxy)


def describe_failure(proc: procs.Proc, extra_log: Path | None = None) -> str:
    text = proc.log_tail()
    if extra_log is not None and extra_log.exists():
        text += "\n" + "\n".join(extra_log.read_text(errors="replace").splitlines()[-20:])
    return text.strip() or "(no output)"


def stop_all(running: list[procs.Proc], tmp: Path, results: Results, *, keep_tmp: bool) -> None:
    """Stop every process the run started (last started first) by PID; note unexpected exit
    statuses and error lines in their logs; remove the temp dir unless keep_tmp."""
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
    if keep_tmp:
        log(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- measuring


def proxy_cpu(target: Target) -> float:
    return procs.cpu_seconds(target.proc.pid) if target.proc is not None else 0.0


def proxy_cpu_split(target: Target) -> tuple[float, float]:
    """(user, system) CPU seconds of the proxy's process tree so far."""
    return procs.cpu_split_seconds(target.proc.pid) if target.proc is not None else (0.0, 0.0)


def ensure_alive(target: Target) -> None:
    if target.proc is not None and not target.proc.alive():
        raise RuntimeError(
            f"{target.name} exited with {target.proc.popen.returncode}:\n"
            + describe_failure(target.proc)
        )


def run_wrk(
    target: Target,
    path: str,
    args: argparse.Namespace,
    headers: tuple[str, ...] = (),
    script: Path | None = None,
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
        script=str(script) if script is not None else None,
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


# --------------------------------------------------------------------------- environment


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


# --------------------------------------------------------------------------- logs and load


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


def load_note(idle: float, started: float, busy0: float, own0: float) -> str:
    """The report's note on how disturbed the run was: wall time since started (monotonic),
    idle fraction before, and the CPU time that processes not started by the run used since
    procs.machine_busy_seconds() was busy0 and procs.own_cpu_seconds() was own0."""
    wall = time.monotonic() - started
    foreign = (procs.machine_busy_seconds() - busy0) - (procs.own_cpu_seconds() - own0)
    share = max(0.0, foreign) / (wall * len(os.sched_getaffinity(0)))
    return (
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
