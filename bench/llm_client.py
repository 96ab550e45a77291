#!/usr/bin/env python3
"""LLM-shaped load for test (g): N concurrent streamed chat completions, R events/s each.

Opens --streams keep-alive connections (TLS when --ca is given) first, then starts one
``POST {path}?events=E&interval=1/R`` per connection, the starts spread evenly over
--spread seconds, and reads each SSE stream to its end. The backend (bench/sse_server.py)
writes its send time into every event (``"t":<unix seconds>``); the client records, per
event, arrival time - send time, and per stream the time from writing the request to the
first response byte (TTFB). Prints one JSON object on stdout:

    {"streams": N, "events_expected": N*E, "events": ..., "failures": [...],
     "delay_ms": {"p50": ..., "p90": ..., "p99": ..., "p999": ..., "max": ...},
     "ttfb_ms": {...}, "wall_s": ..., "bytes": ...}

Written to cost the client little per event (a bare asyncio.Protocol, no HTTP library, one
scan per received chunk), so that at thousands of events per second the client, not only
the proxy, keeps up: its own scheduling delay is in the direct baseline and cancels out of
"added" delay. The garbage collector is off while streams run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import resource
import ssl
import sys
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
REQUEST_BODY = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"Tell me a story."}],'
    b'"max_tokens":256,"stream":true}'
)
_T = b'"t":'
_MAX_BUFFER = 1 << 20  # a stream that sends this much without an event end is broken


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {k: math.nan for k in ("p50", "p90", "p99", "p999", "max")}
    v = sorted(values)

    def at(p: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))]

    return {"p50": at(50), "p90": at(90), "p99": at(99), "p999": at(99.9), "max": v[-1]}


@dataclass
class Shared:
    delays: list[float] = field(default_factory=list)  # ms
    ttfb: list[float] = field(default_factory=list)  # ms
    events: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)


class Stream(asyncio.Protocol):
    """One connection: one request, one SSE response read to its end."""

    def __init__(self, shared: Shared, expected: int) -> None:
        self.shared = shared
        self.expected = expected
        self.transport: asyncio.WriteTransport | None = None
        self.buf = b""
        self.head_done = False
        self.sent_at = 0.0
        self.first = True
        self.events = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def send(self, request: bytes) -> None:
        if self.transport is None:
            self._fail("not connected")
            return
        self.sent_at = time.time()
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.first:
            self.first = False
            self.shared.ttfb.append((now - self.sent_at) * 1000)
        self.shared.bytes += len(data)
        buf = self.buf + data
        if not self.head_done:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[:end].split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                self._fail(f"status {status.decode(errors='replace')}")
                return
            self.head_done = True
            buf = buf[end + 4 :]
        # Events end with a blank line; the scan looks only at complete events.
        last = buf.rfind(b"\n\n")
        if last >= 0:
            complete, self.buf = buf[: last + 2], buf[last + 2 :]
            pos = complete.find(_T)
            delays = self.shared.delays
            while pos >= 0:
                start = pos + len(_T)
                stop = complete.find(b"}", start)
                delays.append((now - float(complete[start:stop])) * 1000)
                self.events += 1
                pos = complete.find(_T, stop)
            if b"[DONE]" in complete:
                self._finish()
        else:
            self.buf = buf
            if len(buf) > _MAX_BUFFER:
                self._fail("no event end within 1 MiB")

    def _finish(self) -> None:
        if self.done.done():
            return
        self.shared.events += self.events
        if self.events != self.expected:
            self.shared.failures.append(f"{self.events}/{self.expected} events")
        self.done.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.shared.failures.append(why)
            self.shared.events += self.events
            self.done.set_result(None)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(f"connection lost after {self.events} events: {exc or 'EOF'}")


async def run(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    ctx: ssl.SSLContext | None = None
    if args.ca:
        ctx = ssl.create_default_context(cafile=args.ca)
    shared = Shared()
    interval = 1.0 / args.rate
    target = f"{args.path}?events={args.events}&interval={interval:.6f}"
    request = (
        f"POST {target} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(REQUEST_BODY)}\r\n\r\n"
    ).encode() + REQUEST_BODY
    gate = asyncio.Semaphore(64)  # handshakes in flight at once

    async def connect() -> Stream:
        async with gate:
            _, proto = await loop.create_connection(
                lambda: Stream(shared, args.events),
                HOST,
                args.port,
                ssl=ctx,
                server_hostname="localhost" if ctx else None,
            )
        return proto

    async with asyncio.timeout(60):
        streams = await asyncio.gather(*(connect() for _ in range(args.streams)))
    gc.collect()
    gc.disable()
    started = time.monotonic()
    base = loop.time() + 0.05
    step = args.spread / args.streams
    for i, s in enumerate(streams):
        loop.call_at(base + i * step, s.send, request)
    limit = args.spread + args.events * interval + args.timeout
    try:
        async with asyncio.timeout(limit):
            await asyncio.gather(*(s.done for s in streams))
    except TimeoutError:
        late = sum(1 for s in streams if not s.done.done())
        shared.failures.append(f"{late} streams not finished within {limit:.0f} s")
        for s in streams:
            if not s.done.done():
                shared.events += s.events
    wall = time.monotonic() - started
    gc.enable()
    for s in streams:
        if s.transport is not None:
            s.transport.close()
    return {
        "streams": args.streams,
        "events_expected": args.streams * args.events,
        "events": shared.events,
        "failures": shared.failures[:20],
        "failure_count": len(shared.failures),
        "delay_ms": percentiles(shared.delays),
        "ttfb_ms": percentiles(shared.ttfb),
        "wall_s": wall,
        "bytes": shared.bytes,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca", help="CA file: speak TLS to the target (else plain HTTP)")
    p.add_argument("--streams", type=int, default=512)
    p.add_argument("--rate", type=float, default=25.0, help="events per second per stream")
    p.add_argument("--events", type=int, default=100, help="events per stream")
    p.add_argument("--spread", type=float, default=1.0, help="seconds over which streams start")
    p.add_argument("--path", default="/v1/chat/completions")
    p.add_argument("--timeout", type=float, default=30.0, help="slack after the last event")
    args = p.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # noqa: PLC0415 - optional: the client runs on asyncio's loop too
    except ImportError:
        out = asyncio.run(run(args))
    else:
        out = uvloop.run(run(args))
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
