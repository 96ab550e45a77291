"""Test (g): LLM-shaped load. N concurrent streamed ``POST /v1/chat/completions`` at R
events/s each for E events (OpenAI ``chat.completion.chunk`` events of about 210 bytes),
through direct (the backend nginx, plain HTTP), nginx, and teeproxy with receipts off and on
(the simulated attestation provider in both), one after the other in one run, same
backend. Per (N, target): the proxy's CPU per 1,000 events relayed, the per-event delivery
delay and time to first byte (p50/p99; "added" = the proxy's minus direct's at the same N),
and failures. Then N is scaled up (--llm-scale) to find the streams each proxy sustains
with its added p99 delay within --llm-bound ms.

Where a proxy's CPU goes is split in two by one more run per proxy at --llm-streams with
one event per stream (connect, TLS handshake, request, response head, one event, close):
its CPU per stream is the per-connection cost; (CPU of the E-event run - CPU of the
one-event run) / (N x (E - 1)) is the marginal CPU of relaying one more event. Both are
reported as user and system time (/proc utime, stime), so that the kernel's share (socket
reads and writes, on loopback including the peer's TCP receive) is told apart from the
proxy's own code.

The load comes from bench/llm_client.py in its own process (its CPU is not the proxy's);
the proxy's CPU is read from /proc for its whole process tree. Entry: run().
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import procs
from harness import (
    BENCH_DIR,
    Results,
    Target,
    ensure_alive,
    guarded,
    log,
    proxy_cpu_split,
)

LLM_TARGETS = ("direct", "nginx", "teeproxy-off", "teeproxy-on")


@dataclass
class LlmResult:
    target: str
    streams: int
    events_expected: int
    events: int
    failures: int
    first_failures: list[str]
    delay_ms: dict[str, float]
    ttfb_ms: dict[str, float]
    wall_s: float
    cpu_s: float  # the proxy's process tree (0 for direct)
    top_cpu_s: float = 0.0  # of that, the top process alone (nginx master, teeproxy supervisor)
    user_s: float = 0.0  # cpu_s = user_s + sys_s
    sys_s: float = 0.0
    events_per_stream: int = 0

    @property
    def cpu_us_per_event(self) -> float:
        return self.cpu_s / self.events * 1e6 if self.events else float("nan")


def measure(
    target: Target,
    streams: int,
    args: argparse.Namespace,
    ca_file: Path,
    events: int | None = None,
) -> LlmResult:
    """One load run of ``streams`` streams (``events`` each, default --llm-events) against
    target; raises if the client failed."""
    events = args.llm_events if events is None else events
    ensure_alive(target)
    cmd = [
        sys.executable,
        str(BENCH_DIR / "llm_client.py"),
        "--port",
        str(target.port),
        "--streams",
        str(streams),
        "--rate",
        str(args.llm_rate),
        "--events",
        str(events),
        "--spread",
        str(args.llm_spread),
    ]
    if target.ctx is not None:
        cmd += ["--ca", str(ca_file)]
    user0, sys0 = proxy_cpu_split(target)
    top = target.proc.pid if target.proc is not None else None
    top0 = procs.own_process_cpu_seconds(top) if top is not None else 0.0
    timeout = args.llm_spread + events / args.llm_rate + 120
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    user1, sys1 = proxy_cpu_split(target)
    cpu = (user1 - user0) + (sys1 - sys0)
    top_cpu = procs.own_process_cpu_seconds(top) - top0 if top is not None else 0.0
    if done.returncode != 0:
        raise RuntimeError(f"llm_client exited {done.returncode}: {done.stderr[-2000:]}")
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    ensure_alive(target)
    return LlmResult(
        target=target.name,
        streams=streams,
        events_expected=int(doc["events_expected"]),
        events=int(doc["events"]),
        failures=int(doc["failure_count"]),
        first_failures=list(doc["failures"]),
        delay_ms=dict(doc["delay_ms"]),
        ttfb_ms=dict(doc["ttfb_ms"]),
        wall_s=float(doc["wall_s"]),
        cpu_s=cpu,
        top_cpu_s=top_cpu,
        user_s=user1 - user0,
        sys_s=sys1 - sys0,
        events_per_stream=events,
    )


def added(results: Results, streams: int, target: str, metric: str, pct: str) -> float | None:
    """The target's percentile minus direct's, at the same number of streams."""
    mine, base = results.llm.get((streams, target)), results.llm.get((streams, "direct"))
    if mine is None or base is None:
        return None
    return getattr(mine, metric)[pct] - getattr(base, metric)[pct]


def run(targets: dict[str, Target], args: argparse.Namespace, results: Results, ca: Path) -> None:
    """(g) at --llm-streams, then the --llm-scale series, into results.llm."""
    paths = [targets[n] for n in LLM_TARGETS if n in targets]
    series = sorted({args.llm_streams, *args.llm_scale})
    over: set[str] = set()  # proxies already past the bound: not scaled further
    for rnd, n in enumerate(series):
        k = rnd % len(paths)
        for t in paths[k:] + paths[:k]:  # rotate the order from one N to the next
            if t.name in over and n > args.llm_streams:
                continue  # past the bound at a smaller N: no need to load it harder
            what = f"(g) LLM load, {n} streams"
            r = guarded(results, t.name, what, partial(measure, t, n, args, ca))
            if r is None:
                over.add(t.name)
                continue
            results.llm[(n, t.name)] = r
            log(
                f"(g) {t.name} x{n}: delay p50 {r.delay_ms['p50']:.2f} p99 "
                f"{r.delay_ms['p99']:.2f} ms, ttfb p99 {r.ttfb_ms['p99']:.2f} ms, "
                f"{r.cpu_us_per_event:.1f} us CPU/event, {r.events}/{r.events_expected} "
                f"events, {r.failures} failures"
            )
            time.sleep(0.5)  # let the last connections close before the next target
        for t in paths:
            a = added(results, n, t.name, "delay_ms", "p99")
            if t.name != "direct" and a is not None and a > args.llm_bound:
                over.add(t.name)


def split_runs(
    targets: dict[str, Target], args: argparse.Namespace, results: Results, ca: Path
) -> None:
    """One run per proxy at --llm-streams with one event per stream, into results.llm_one
    (the per-connection cost; see the module docstring)."""
    if args.llm_events < 2:
        return  # no marginal event to tell apart
    for name in LLM_TARGETS:
        t = targets.get(name)
        if t is None or t.proc is None:
            continue
        what = f"(g) one-event run, {args.llm_streams} streams"
        r = guarded(results, t.name, what, partial(measure, t, args.llm_streams, args, ca, 1))
        if r is not None:
            results.llm_one[t.name] = r
            log(f"(g) {t.name} one event x{args.llm_streams}: {r.cpu_s:.2f} s CPU")
        time.sleep(0.5)


@dataclass
class CpuSplit:
    """Per stream (one-event run) and per marginal event, user and system CPU."""

    stream_user_ms: float
    stream_sys_ms: float
    event_user_us: float
    event_sys_us: float

    @property
    def stream_ms(self) -> float:
        return self.stream_user_ms + self.stream_sys_ms

    @property
    def event_us(self) -> float:
        return self.event_user_us + self.event_sys_us


def cpu_split(results: Results, target: str, streams: int) -> CpuSplit | None:
    """The split for target from its one-event run and its run at ``streams``."""
    one, full = results.llm_one.get(target), results.llm.get((streams, target))
    if one is None or full is None or one.streams != streams or full.events_per_stream < 2:
        return None  # (split_runs makes the one-event run at --llm-streams)
    more = streams * (full.events_per_stream - 1)  # events beyond the first of each stream
    return CpuSplit(
        stream_user_ms=one.user_s / streams * 1e3,
        stream_sys_ms=one.sys_s / streams * 1e3,
        event_user_us=(full.user_s - one.user_s) / more * 1e6,
        event_sys_us=(full.sys_s - one.sys_s) / more * 1e6,
    )


def sustained(results: Results, target: str, bound: float) -> int | None:
    """The largest N measured whose added p99 delay stayed within bound, without failures."""
    best: int | None = None
    for (n, name), r in sorted(results.llm.items()):
        if name != target:
            continue
        a = added(results, n, target, "delay_ms", "p99")
        if a is None or r.failures or r.events != r.events_expected or a > bound:
            break
        best = n
    return best
