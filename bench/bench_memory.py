"""Test (e): memory per open idle stream. After the warm-up, VmRSS and PSS summed over the
proxy's process tree; then --idle-streams concurrent `GET /idle` TLS streams held open, 2 s
to settle, the same sums again; KiB per stream = PSS delta / streams. Entry: run()."""

from __future__ import annotations

import argparse
import asyncio
import time
from functools import partial

import clients
import procs
from harness import MemResult, Results, Target, ensure_alive, guarded, log


def measure(target: Target, args: argparse.Namespace) -> MemResult:
    """One proxy's memory before and while it holds args.idle_streams idle streams."""
    assert target.proc is not None  # noqa: S101
    pid = target.proc.pid
    time.sleep(1.0)
    before = procs.memory(pid)

    async def measure_open() -> object:
        # Let the proxy settle (buffers allocated, backend streams established).
        await asyncio.sleep(2.0)
        return procs.memory(pid)

    idle = clients.run_async(
        clients.idle_streams(target.port, target.ctx, args.idle_streams, measure_open)
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


def run(proxies: list[Target], args: argparse.Namespace, results: Results) -> None:
    """(e) on each proxy in turn, into results.mem."""
    for t in proxies:
        log(f"(e) {args.idle_streams} idle streams through {t.name}")
        mem = guarded(results, t.name, "(e) memory", partial(measure, t, args))
        if mem is not None:
            results.mem[t.name] = mem
            log(f"    {mem.kib_per_stream_pss:.1f} KiB/stream (PSS)")
