"""Test (d): SSE delivery delay. An aiohttp client opens --sse-streams keep-alive
connections, then `GET /sse` on each and records, for every event, its arrival time - the
timestamp the SSE server wrote into it; the same on every path (direct-sse, direct, the
proxies), in --sse-rounds rounds with the order rotating. Entry: run()."""

from __future__ import annotations

import argparse
from functools import partial

import clients
from harness import Results, Target, ensure_alive, guarded, log


def measure(target: Target, args: argparse.Namespace) -> clients.SSEResult:
    """One round of (d) on one path; raises unless every event of every stream arrived."""
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


def run(paths: list[Target], args: argparse.Namespace, results: Results) -> None:
    """(d) over paths (the direct baselines first, then the proxies), into
    results.sse_rounds; a path that fails once is dropped with all its rounds."""
    # Rounds alternate the paths (rotating the order) so that slow drifts of the
    # machine's state hit the baseline and the proxies alike; samples are pooled.
    failed: set[str] = set()
    for rnd in range(args.sse_rounds):
        k = rnd % len(paths)
        for t in paths[k:] + paths[:k]:
            if t.name in failed:
                continue
            s = guarded(results, t.name, "(d) SSE", partial(measure, t, args))
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
