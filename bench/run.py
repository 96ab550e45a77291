#!/usr/bin/env python3
"""teeproxy vs nginx benchmark: one run starts a fast loopback backend, nginx as a
TLS-terminating reverse proxy and teeproxy in front of it, measures

  (a) small responses over keep-alive TLS        wrk -t2 -c50 /small     req/s, p50, p99
  (b) one full TLS handshake per request         wrk ... Connection: close  req/s
  (c) 1 MiB responses                            wrk /1m                 MiB/s
  (d) SSE delivery delay at 50 events/s          asyncio client          added p50/p99
  (e) memory per open idle stream                2,000 streams           KiB/stream
  (f) latency signing adds per request           sequential POSTs, wrk POST, SSE streams
      (teeproxy with signed receipts on vs off, nginx as the peer)  ms added, req/s

and writes a Markdown report to bench/RESULTS.md. See bench/README.md.

    /tmp/venv/bin/python bench/run.py            # full run, ~5 minutes
    /tmp/venv/bin/python bench/run.py --quick    # smoke run, ~1.5-2 minutes
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
# Test (f): nginx, and teeproxy with the simulated attestation provider, receipts off / on.
RX_OFF, RX_ON = "teeproxy-off", "teeproxy-on"
RX_TARGETS = ("nginx", RX_OFF, RX_ON)
ALL_TESTS = "abcdef"
T = TypeVar("T")

TARGETS = {
    "a": ("req/s ratio", ">= 0.5 of nginx"),
    "b": ("req/s ratio", ">= 0.7 of nginx"),
    "c": ("MiB/s ratio", ">= 0.8 of nginx"),
    "d": ("added p99 delay", "<= 2 ms"),
    "e": ("KiB per idle stream", "<= 40 KiB"),
    "f": ("latency signing adds per request", "reported, no target"),
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
    p.add_argument("--quick", action="store_true", help="short smoke run (~1.5-2 minutes)")
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
    p.add_argument("--tests", default=ALL_TESTS, help="subset of tests to run, e.g. 'ade'")
    p.add_argument("--idle-streams", type=int, default=2000, help="streams for test (e)")
    p.add_argument("--sse-streams", type=int, default=20, help="concurrent streams for (d)")
    p.add_argument("--sse-events", type=int, default=50, help="events per stream per round")
    p.add_argument(
        "--sse-rounds", type=int, default=None, help="rounds of (d) over all paths [10; quick 1]"
    )
    p.add_argument("--sse-rate", type=float, default=50.0, help="events per second per stream")
    p.add_argument(
        "--rx-requests",
        type=int,
        default=None,
        help="(f1) sequential POSTs per target, after --rx-warmup more [2000; quick 500]",
    )
    p.add_argument("--rx-warmup", type=int, default=200, help="(f1) unmeasured POSTs first")
    p.add_argument(
        "--rx-streams", type=int, default=None, help="(f2) streams per target [300; quick 60]"
    )
    p.add_argument("--rx-events", type=int, default=20, help="(f2) data events per stream")
    p.add_argument("--rx-interval", type=float, default=0.002, help="(f2) seconds between events")
    p.add_argument(
        "--rx-rounds",
        type=int,
        default=None,
        help="(f) rounds over the targets (rotating order, samples pooled) [5; quick 2]",
    )
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
    if args.rx_requests is None:
        args.rx_requests = 500 if args.quick else 2000
    if args.rx_streams is None:
        args.rx_streams = 60 if args.quick else 300
    if args.rx_rounds is None:
        args.rx_rounds = 2 if args.quick else 5
    args.warmup = 1.0 if args.quick else 2.0
    args.proxies = [x.strip() for x in args.proxies.split(",") if x.strip()]
    unknown = set(args.proxies) - set(PROXIES)
    if unknown:
        p.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    if set(args.tests) - set(ALL_TESTS):
        p.error(f"--tests takes letters from '{ALL_TESTS}'")
    if min(args.rx_requests, args.rx_streams, args.rx_rounds, args.rx_events) < 1:
        p.error("--rx-requests, --rx-streams, --rx-rounds and --rx-events must be >= 1")
    if args.rx_warmup < 0 or args.rx_interval < 0:
        p.error("--rx-warmup and --rx-interval must be >= 0")
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
    rx_posts: dict[str, clients.PostResult] = field(default_factory=dict)  # (f1) target
    rx_streams: dict[str, clients.StreamResult] = field(default_factory=dict)  # (f2) target
    rx_checks: list[str] = field(default_factory=list)  # (f) what was checked, and how it went
    # (f) per round: ("f1", target) -> p50 latency; ("f2", target) -> p50 end after last event
    rx_round_p50: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rx_sign_ms: float | None = None  # (f) one signature + header encoding, in this process
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
        tee = procs.Proc(name, cmd, tmp / "logs" / f"{name}.log", cwd=REPO)
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


def _expects_receipt(target: Target) -> bool:
    return target.name == RX_ON


def f1_posts(target: Target, conn: clients.KeepAlive, count: int) -> clients.PostResult:
    """count sequential signed-route POSTs; the receipt header must be there on every
    response of teeproxy-on and on none of the others (else nothing was measured)."""
    ensure_alive(target)
    res = clients.timed_posts(conn, configs.CHAT_PATH, configs.CHAT_REQUEST.encode(), count)
    expected = count if _expects_receipt(target) else 0
    if res.with_receipt != expected:
        raise RuntimeError(
            f"{res.with_receipt} of {count} responses carried a {clients.RECEIPT_HEADER} "
            f"header, expected {expected}"
        )
    return res


def f2_streams(
    target: Target, conn: clients.KeepAlive, count: int, path: str
) -> list[clients.StreamSample]:
    """count sequential streamed completions; Teeproxy-Receipt-Id on every one of
    teeproxy-on, on none of the others."""
    ensure_alive(target)
    body = configs.STREAM_REQUEST.encode()
    samples = [clients.timed_stream(conn, path, body) for _ in range(count)]
    with_id = sum(s.receipt_id is not None for s in samples)
    expected = count if _expects_receipt(target) else 0
    if with_id != expected:
        raise RuntimeError(
            f"{with_id} of {count} streams carried a {clients.RECEIPT_ID_HEADER} header, "
            f"expected {expected}"
        )
    return samples


def signer_address(target: Target) -> bytes | None:
    """The receipt signer's address teeproxy wrote to STATE_DIR/signing/address."""
    if target.state_dir is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        text = (target.state_dir / "signing" / "address").read_text().strip()
        return bytes.fromhex(text.removeprefix("0x"))
    return None


def check_receipt(
    target: Target, what: str, blob: str | bytes, request: bytes, response: bytes
) -> str:
    """Verify a receipt (header or JSON form) against the exact bodies sent and received,
    and its signer against the address teeproxy published; raises if it does not verify."""
    from certmgr.errors import ReceiptError  # noqa: PLC0415
    from certmgr.receipts.format import Receipt  # noqa: PLC0415
    from certmgr.receipts.verify import verify_receipt  # noqa: PLC0415

    signer = signer_address(target)
    if signer is None:
        raise RuntimeError(f"{target.name}: no receipt signer address in its state dir")
    try:
        receipt = Receipt.from_header(blob) if isinstance(blob, str) else Receipt.from_json(blob)
        verify_receipt(
            receipt, request, response, expected_signer=signer, expected_measurement=None
        )
    except ReceiptError as exc:
        msg = f"{what} does NOT verify against the bytes sent and received: {exc}"
        raise RuntimeError(msg) from exc
    return (
        f"{what}: verifies against the exact request and response bytes, signed by "
        f"0x{receipt.signer.hex()} (STATE_DIR/signing/address), model {receipt.model!r}, "
        f"responseId {receipt.response_id!r}"
    )


def signing_cost_ms(rounds: int = 5, count: int = 400) -> float:
    """What one receipt costs in isolation (this Python, no proxy, no I/O): sign_receipt
    over (f1)'s bodies plus the Teeproxy-Receipt encoding; median over rounds of the mean."""
    import hashlib  # noqa: PLC0415

    from certmgr.receipts.signing import (  # noqa: PLC0415
        SigningKey,
        sign_receipt,
    )

    key = SigningKey.from_private_bytes(hashlib.sha256(b"teeproxy bench key").digest())
    req = hashlib.sha256(configs.CHAT_REQUEST.encode()).digest()
    resp = hashlib.sha256(configs.CHAT_RESPONSE.encode()).digest()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(count):
            sign_receipt(
                key,
                request_sha256=req,
                response_sha256=resp,
                model="bench-model",
                response_id="chatcmpl-bench0001",
                timestamp=int(time.time()),
                measurement_id=bytes(32),
            ).to_header()
        per_round.append((time.perf_counter() - t0) * 1000 / count)
    return statistics.median(per_round)


def test_receipts_f1(rx: list[Target], args: argparse.Namespace, results: Results) -> None:
    """(f1) sequential keep-alive POSTs, rounds over the targets in rotating order."""
    conns = {t.name: clients.KeepAlive(t.port, t.ctx) for t in rx}
    try:
        active = [
            t
            for t in rx
            if guarded(
                results, t.name, "(f1) warm-up", partial(f1_posts, t, conns[t.name], args.rx_warmup)
            )
            is not None
        ]
        per_round = math.ceil(args.rx_requests / args.rx_rounds)
        failed: set[str] = set()
        for rnd in range(args.rx_rounds):
            k = rnd % len(active) if active else 0
            for t in active[k:] + active[:k]:
                if t.name in failed:
                    continue
                r = guarded(
                    results, t.name, "(f1) POST", partial(f1_posts, t, conns[t.name], per_round)
                )
                if r is None:
                    failed.add(t.name)
                    results.rx_posts.pop(t.name, None)
                    results.rx_round_p50.pop(("f1", t.name), None)
                    continue
                results.rx_posts.setdefault(t.name, clients.PostResult()).extend(r)
                results.rx_round_p50.setdefault(("f1", t.name), []).append(
                    clients.percentile(r.latency_ms, 50)
                )
    finally:
        for conn in conns.values():
            conn.close()
    on = results.rx_posts.get(RX_ON)
    target_on = next((t for t in rx if t.name == RX_ON), None)
    if on is not None and target_on is not None and on.receipt is not None:
        note = guarded(
            results,
            RX_ON,
            "(f1) receipt check",
            partial(
                check_receipt,
                target_on,
                f"(f1) {clients.RECEIPT_HEADER} header",
                on.receipt,
                configs.CHAT_REQUEST.encode(),
                on.response,
            ),
        )
        if note is not None:
            results.rx_checks.append(note)
    for name, res in results.rx_posts.items():
        results.rx_checks.append(
            f"(f1) {name}: {res.with_receipt} of {len(res.latency_ms):,} measured responses "
            f"carried {clients.RECEIPT_HEADER}"
        )


def test_receipts_f2(rx: list[Target], args: argparse.Namespace, results: Results) -> None:
    """(f2) sequential streamed completions, rounds over the targets in rotating order;
    then the receipts of the first and the last stream fetched from teeproxy-on."""
    path = f"{configs.STREAM_PATH}?events={args.rx_events}&interval={args.rx_interval:g}"
    conns = {t.name: clients.KeepAlive(t.port, t.ctx) for t in rx}
    try:
        active = [
            t
            for t in rx
            if guarded(
                results, t.name, "(f2) warm-up", partial(f2_streams, t, conns[t.name], 3, path)
            )
            is not None
        ]
        per_round = math.ceil(args.rx_streams / args.rx_rounds)
        failed: set[str] = set()
        for rnd in range(args.rx_rounds):
            k = rnd % len(active) if active else 0
            for t in active[k:] + active[:k]:
                if t.name in failed:
                    continue
                samples = guarded(
                    results,
                    t.name,
                    "(f2) streams",
                    partial(f2_streams, t, conns[t.name], per_round, path),
                )
                if samples is None:
                    failed.add(t.name)
                    results.rx_streams.pop(t.name, None)
                    results.rx_round_p50.pop(("f2", t.name), None)
                    continue
                results.rx_streams.setdefault(t.name, clients.StreamResult()).samples += samples
                results.rx_round_p50.setdefault(("f2", t.name), []).append(
                    clients.percentile([x.after_sent_ms for x in samples], 50)
                )
        on = results.rx_streams.get(RX_ON)
        target_on = next((t for t in rx if t.name == RX_ON), None)
        if on is not None and target_on is not None and on.samples:
            for label, sample in (("first", on.samples[0]), ("last", on.samples[-1])):
                note = guarded(
                    results,
                    RX_ON,
                    "(f2) receipt fetch",
                    partial(fetch_stream_receipt, target_on, conns[RX_ON], label, sample),
                )
                if note is not None:
                    results.rx_checks.append(note)
    finally:
        for conn in conns.values():
            conn.close()
    for name, res in results.rx_streams.items():
        with_id = sum(s.receipt_id is not None for s in res.samples)
        results.rx_checks.append(
            f"(f2) {name}: {with_id} of {len(res.samples):,} measured streams carried "
            f"{clients.RECEIPT_ID_HEADER}"
        )


def fetch_stream_receipt(
    target: Target, conn: clients.KeepAlive, label: str, sample: clients.StreamSample
) -> str:
    assert sample.receipt_id is not None  # noqa: S101 - f2_streams checked
    path = f"/v1/receipts/{sample.receipt_id}"
    status, blob = conn.get(path)
    if status != 200:
        raise RuntimeError(f"GET {path}: HTTP {status}: {blob[:200]!r}")
    return check_receipt(
        target,
        f"(f2) GET /v1/receipts/{{id}} of the {label} stream: HTTP 200, the receipt",
        blob,
        configs.STREAM_REQUEST.encode(),
        sample.body,
    )


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


def _rx_value(results: Results, name: str, metric: str) -> float | None:
    """One (f) number of one target; None when it was not measured."""
    kind, _, stat = metric.partition(":")
    if kind == "seq":
        post = results.rx_posts.get(name)
        if post is None or not post.latency_ms:
            return None
        if stat == "mean":
            return statistics.fmean(post.latency_ms)
        return clients.percentile(post.latency_ms, float(stat))
    if kind == "wrk":
        r = results.wrk.get(("f", name))
        return None if r is None else float(getattr(r, stat))
    attr, _, pct = stat.partition("@")
    stream = results.rx_streams.get(name)
    if stream is None or not stream.samples:
        return None
    return clients.percentile(stream.values(attr), float(pct))


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _nginx_on_off(results: Results, metric: str) -> tuple[float | None, ...]:
    """``metric`` of (f) for nginx, teeproxy with receipts on, and with receipts off."""
    return tuple(_rx_value(results, name, metric) for name in ("nginx", RX_ON, RX_OFF))


def _round_cell(added: list[float], digits: int = 3) -> str:
    if not added:
        return "n/a"
    return (
        f"{statistics.median(added):.{digits}f} ({min(added):.{digits}f} to "
        f"{max(added):.{digits}f})"
    )


def _receipt_summary_rows(results: Results) -> list[str]:
    rows = [
        f"| (f) one receipt signature, in process | ms | | {_fmt(results.rx_sign_ms, 3)} | | | |"
    ]
    seq = "(f1) signed JSON POST, 1 connection"
    n, on, off = _nginx_on_off(results, "seq:50")
    rows.append(
        f"| {seq} | p50 latency ms (teeproxy: receipts on) | {_fmt(n, 3)} | {_fmt(on, 3)} | "
        f"{_fmt(_ratio(on, n), 2)} | | |"
    )
    rows.append(
        f"| {seq} | **p50 latency signing adds ms** (receipts on - off) | | "
        f"{_fmt(_diff(on, off), 3)} | | reported | |"
    )
    _, on99, off99 = _nginx_on_off(results, "seq:99")
    rows.append(
        f"| {seq} | p99 latency signing adds ms (receipts on - off) | | "
        f"{_fmt(_diff(on99, off99), 3)} | | | |"
    )
    n, on, off = _nginx_on_off(results, "wrk:requests_per_s")
    rows.append(
        f"| (f1) signed JSON POST, wrk | req/s (teeproxy: receipts on; off: {_fmt(off, 0)}) | "
        f"{_fmt(n, 0)} | {_fmt(on, 0)} | {_fmt(_ratio(on, n), 2)} | | |"
    )
    _, on, off = _nginx_on_off(results, "wrk:cpu_ms_per_request")
    rows.append(
        f"| (f1) signed JSON POST, wrk | CPU ms per request signing adds (on - off) | | "
        f"{_fmt(_diff(on, off), 3)} | | | |"
    )
    _, on, off = _nginx_on_off(results, "stream:after_sent_ms@50")
    rows.append(
        f"| (f2) signed SSE stream | **p50 delay signing adds at the end of a stream ms** "
        f"(on - off) | | {_fmt(_diff(on, off), 3)} | | reported | |"
    )
    return rows


def _receipt_section(results: Results, args: argparse.Namespace) -> list[str]:
    names = list(RX_TARGETS)
    out = [
        "",
        "### Signed receipts (f)",
        "",
        f"Three targets on the same backend and certificate, {args.workers} worker(s) each: "
        f"`nginx` (cannot sign), `{RX_OFF}` and `{RX_ON}`: teeproxy with "
        '`[attestation] provider = "simulated"` (development quotes: no TEE here) and '
        "`[receipts] enabled = false` / `true`, so only signing differs. "
        f"(f1) `POST {configs.CHAT_PATH}` with a {len(configs.CHAT_REQUEST)}-byte JSON body; "
        f"the backend nginx answers a {len(configs.CHAT_RESPONSE)}-byte JSON completion "
        f"(with Content-Length, so `{RX_ON}` holds it back, hashes and signs it and sends "
        f"`{clients.RECEIPT_HEADER}`). Sequential = one keep-alive TLS connection, one "
        "request at a time, latency from the request's first byte written to the response's "
        "last byte read (Python http.client); wrk = the same POST (Lua script), "
        f"-t{args.threads} -c{args.connections}. (f2) `POST {configs.STREAM_PATH}`: an "
        f"SSE completion of {args.rx_events} data events every {args.rx_interval:g} s plus "
        "`data: [DONE]` from sse_server.py (through the backend nginx), read line by line "
        f"on one keep-alive connection; `{RX_ON}` signs and stores the receipt before "
        "it writes the end of the response. Rounds rotate the order of the targets; "
        "samples are pooled.",
        "",
        f"| metric | nginx | {RX_OFF} | {RX_ON} | on - off | on / off | on / nginx |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows: list[tuple[str, str, int]] = [
        ("(f1) sequential p50 ms", "seq:50", 3),
        ("(f1) sequential p90 ms", "seq:90", 3),
        ("(f1) sequential p99 ms", "seq:99", 3),
        ("(f1) sequential mean ms", "seq:mean", 3),
        ("(f1) wrk req/s", "wrk:requests_per_s", 0),
        ("(f1) wrk p50 ms", "wrk:p50_ms", 2),
        ("(f1) wrk p99 ms", "wrk:p99_ms", 2),
        ("(f1) wrk proxy CPU ms/request", "wrk:cpu_ms_per_request", 3),
        ("(f1) wrk proxy CPU (cores)", "wrk:cpu_utilisation", 2),
        (
            "(f2) end of response after the backend wrote the last event, p50 ms",
            "stream:after_sent_ms@50",
            3,
        ),
        (
            "(f2) end of response after the backend wrote the last event, p99 ms",
            "stream:after_sent_ms@99",
            3,
        ),
        ("(f2) end of response after the last event was read, p50 ms", "stream:tail_ms@50", 3),
        ("(f2) end of response after the last event was read, p99 ms", "stream:tail_ms@99", 3),
        ("(f2) whole stream (request to end), p50 ms", "stream:total_ms@50", 2),
        ("(f2) whole stream (request to end), p99 ms", "stream:total_ms@99", 2),
    ]
    for label, metric, digits in rows:
        n, off, on = (_rx_value(results, name, metric) for name in names)
        out.append(
            f"| {label} | {_fmt(n, digits)} | {_fmt(off, digits)} | {_fmt(on, digits)} | "
            f"{_fmt(_diff(on, off), max(digits, 2))} | {_fmt(_ratio(on, off), 2)} | "
            f"{_fmt(_ratio(on, n), 2)} |"
        )
    out += [
        "",
        "One receipt in isolation (this Python process, no proxy, no I/O: `sign_receipt` over "
        "the (f1) body hashes + the `Teeproxy-Receipt` encoding, median of 5 x 400): "
        f"**{_fmt(results.rx_sign_ms, 3)} ms**. The on - off differences above should be "
        "close to it (plus hashing and parsing the body); much more means scheduling noise.",
    ]
    counts = {name: len(results.rx_posts[name].latency_ms) for name in results.rx_posts}
    streams = {name: len(results.rx_streams[name].samples) for name in results.rx_streams}
    out += [
        "",
        f"Samples: (f1) {', '.join(f'{k} {v:,}' for k, v in counts.items()) or 'none'}; "
        f"(f2) {', '.join(f'{k} {v:,}' for k, v in streams.items()) or 'none'}.",
    ]
    if args.rx_rounds > 1:
        out += [
            "",
            f"Per round (median and range over {args.rx_rounds} rounds, robust against one "
            "disturbed round): p50 latency signing adds (f1) "
            f"{_round_cell(results.rx_round_added('f1'))} ms; p50 delay at the end of a "
            f"stream signing adds (f2) {_round_cell(results.rx_round_added('f2'))} ms.",
        ]
    out += [
        "",
        "(f2) columns: *after the backend wrote the last event* = the client's clock at the "
        "end of the response - the time sse_server.py put into the last data event just "
        "before writing it (same machine, same clock): what the proxies add between the "
        "last token and the end of the stream, independent of how the last chunks were "
        "coalesced on the way; *after the last event was read* = the client's own gap "
        "between reading the last data event and the end of the response.",
    ]
    if results.rx_checks:
        out += ["", "Checks (a bench that measured no signing fails instead):", ""]
        out += [f"- {c}" for c in results.rx_checks]
    return out


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
        f"niceness {os.getpriority(os.PRIO_PROCESS, 0)}"
        + (
            f"; (f) {args.rx_requests} sequential POSTs (+{args.rx_warmup} warm-up) and "
            f"{args.rx_streams} streams x {args.rx_events} events every {args.rx_interval:g} s "
            f"per target, in {args.rx_rounds} rounds"
            if "f" in args.tests
            else ""
        ),
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
    if "f" in args.tests:
        out += _receipt_summary_rows(results)

    # Raw numbers.
    out += ["", "## Raw numbers", "", "### wrk (a) (b) (c) (f)", ""]
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
    if "f" in args.tests:
        out += _receipt_section(results, args)
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
            # (f) adds two more teeproxy processes (simulated attestation, receipts off/on).
            variants: list[tuple[str, bool | None]] = []
            if set(args.tests) - {"f"}:  # tests a-e use the default configuration
                variants.append(("teeproxy", None))
            if "f" in args.tests:
                variants += [(RX_OFF, False), (RX_ON, True)]
            for name, receipts in variants:
                tee_target = start_teeproxy(
                    name,
                    receipts,
                    args,
                    tmp=tmp,
                    backend_port=backend_port,
                    max_connections=conns * 2,
                    certs=certs,
                    ctx=ctx,
                    running=running,
                    results=results,
                )
                if tee_target is not None:
                    targets[name] = tee_target
        proxies = [targets[n] for n in PROXIES if n in targets]
        rx = [targets[n] for n in RX_TARGETS if n in targets] if "f" in args.tests else []
        rx_only = [t for t in rx if t not in proxies]

        for t in rx_only:
            guarded(results, t.name, "warm-up", partial(warm_up, t, args))
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
        if rx:
            log(f"(f1) {args.rx_requests} sequential POST {configs.CHAT_PATH} per target")
            results.rx_sign_ms = guarded(results, "setup", "(f) signing cost", signing_cost_ms)
            log(f"(f) one receipt signature in process: {_fmt(results.rx_sign_ms, 3)} ms")
            test_receipts_f1(rx, args, results)
            for name, post in results.rx_posts.items():
                log(
                    f"    {name}: p50 {clients.percentile(post.latency_ms, 50):.3f} ms, "
                    f"p99 {clients.percentile(post.latency_ms, 99):.3f} ms"
                )
            script = tmp / "post.lua"
            script.write_text(wrk.post_script(configs.CHAT_REQUEST))
            # Only targets that passed the header checks above (a teeproxy-on that did not
            # sign would be measured as if it did).
            for t in (t for t in rx if t.name in results.rx_posts):
                log(f"(f1) wrk POST {configs.CHAT_PATH} -> {t.name}")
                r = guarded(
                    results,
                    t.name,
                    "(f1) wrk",
                    partial(run_wrk, t, configs.CHAT_PATH, args, (), script),
                )
                if r is not None:
                    results.wrk[("f", t.name)] = r
                    log(
                        f"    {r.requests_per_s:,.0f} req/s, p50 {r.p50_ms:.2f} ms, "
                        f"p99 {r.p99_ms:.2f} ms, CPU {r.cpu_ms_per_request:.3f} ms/request, "
                        f"errors {r.error_count}"
                    )
            log(
                f"(f2) {args.rx_streams} streams x {args.rx_events} events per target "
                f"({configs.STREAM_PATH})"
            )
            test_receipts_f2(rx, args, results)
            for name, st in results.rx_streams.items():
                log(
                    f"    {name}: end after last event sent p50 "
                    f"{clients.percentile(st.values('after_sent_ms'), 50):.3f} ms"
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
