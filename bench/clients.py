"""Benchmark clients that wrk cannot play: readiness/resumption probes, the SSE latency
client (d) and the idle-stream opener for the memory test (e)."""

from __future__ import annotations

import asyncio
import gc
import http.client
import socket
import ssl
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

HOST = "127.0.0.1"
T = TypeVar("T")


def client_context(ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def get_once(
    port: int, path: str, ctx: ssl.SSLContext | None, timeout: float = 2.0
) -> tuple[int, bytes]:
    """One GET; ctx None means plain HTTP."""
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ctx)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_ready(
    port: int,
    ctx: ssl.SSLContext | None,
    timeout: float,
    alive: Callable[[], bool],
    path: str = "/small",
) -> None:
    """Poll until GET path returns 200, the process dies, or timeout passes."""
    deadline = time.monotonic() + timeout
    last: str = "no attempt"
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"process exited while waiting for port {port} ({last})")
        try:
            status, _ = get_once(port, path, ctx, timeout=1.0)
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)
    raise TimeoutError(f"port {port} not ready after {timeout:.0f}s ({last})")


def resumption_probe(port: int, ctx: ssl.SSLContext, attempts: int = 6) -> tuple[int, int]:
    """Whether the server resumes TLS sessions: (resumed, attempts) over fresh connections
    that each offer the previous connection's session (as wrk does when reconnecting)."""
    session: ssl.SSLSession | None = None
    resumed = 0
    for _ in range(attempts):
        with (
            socket.create_connection((HOST, port), timeout=2.0) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST, session=session) as tls,
        ):
            tls.sendall(b"GET /small HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            if tls.session_reused:
                resumed += 1
            session = tls.session
    return resumed, attempts - 1


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; nan for an empty list."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class SSEResult:
    streams: int
    events_expected: int
    ttfb_ms: list[float] = field(default_factory=list)
    delay_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def events_received(self) -> int:
        return len(self.delay_ms)

    @classmethod
    def pooled(cls, rounds: list[SSEResult]) -> SSEResult:
        """All rounds' samples in one result."""
        out = cls(streams=0, events_expected=0)
        for r in rounds:
            out.streams += r.streams
            out.events_expected += r.events_expected
            out.ttfb_ms += r.ttfb_ms
            out.delay_ms += r.delay_ms
            out.errors += r.errors
        return out

    def summary(self) -> dict[str, float]:
        return {
            "ttfb_p50": percentile(self.ttfb_ms, 50),
            "ttfb_p99": percentile(self.ttfb_ms, 99),
            "delay_p50": percentile(self.delay_ms, 50),
            "delay_p99": percentile(self.delay_ms, 99),
            "delay_mean": statistics.fmean(self.delay_ms) if self.delay_ms else float("nan"),
            "delay_max": max(self.delay_ms) if self.delay_ms else float("nan"),
        }


async def _fetch(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: HTTP {resp.status}")


async def _one_stream(
    session: aiohttp.ClientSession,
    url: str,
    start_at: float,
    result: SSEResult,
    limit_s: float,
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    t0 = time.time()
    first = True
    async with asyncio.timeout(limit_s), session.get(url) as resp:
        if resp.status != 200:
            result.errors.append(f"HTTP {resp.status}")
            return
        async for line in resp.content:
            now = time.time()
            if not line.startswith(b"data: "):
                continue
            if first:
                result.ttfb_ms.append((now - t0) * 1000)
                first = False
            _seq, sent = line[6:].split()
            result.delay_ms.append((now - float(sent)) * 1000)


async def sse_latency(
    port: int,
    ctx: ssl.SSLContext | None,
    streams: int,
    events: int,
    interval: float,
) -> SSEResult:
    """streams concurrent SSE streams of events events each; starts are staggered over
    one interval so the server's emissions do not all land in the same millisecond."""
    scheme = "http" if ctx is None else "https"
    url = f"{scheme}://{HOST}:{port}/sse?events={events}&interval={interval}"
    small_url = f"{scheme}://{HOST}:{port}/small"
    result = SSEResult(streams=streams, events_expected=streams * events)
    timeout = events * interval + 30.0
    connector = aiohttp.TCPConnector(limit=0, ssl=ctx if ctx is not None else False)
    gc.collect()
    gc.disable()  # a collection pause in this client would show up as delivery delay
    try:
        return await _sse_latency(
            connector,
            url=url,
            small_url=small_url,
            streams=streams,
            interval=interval,
            result=result,
            limit_s=timeout,
        )
    finally:
        gc.enable()


async def _sse_latency(
    connector: aiohttp.TCPConnector,
    *,
    url: str,
    small_url: str,
    streams: int,
    interval: float,
    result: SSEResult,
    limit_s: float,
) -> SSEResult:
    async with aiohttp.ClientSession(connector=connector) as session:
        # Establish (and TLS-handshake) one keep-alive connection per stream first, so the
        # handshakes of late streams do not stall the event loop while early streams are
        # already receiving events; the SSE requests then reuse these connections.
        async with asyncio.timeout(30):
            await asyncio.gather(*(_fetch(session, small_url) for _ in range(streams)))
        base = time.monotonic() + 0.05
        outcomes = await asyncio.gather(
            *(
                _one_stream(session, url, base + i * interval / streams, result, limit_s)
                for i in range(streams)
            ),
            return_exceptions=True,
        )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            result.errors.append(f"{type(outcome).__name__}: {outcome}")
    return result


@dataclass
class IdleResult:
    requested: int
    established: int
    errors: dict[str, int]
    open_seconds: float
    measurement: object = None


async def _open_idle(
    port: int, ctx: ssl.SSLContext | None, limit_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=ctx, server_hostname=HOST if ctx is not None else None
        )
        try:
            writer.write(b"GET /idle HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                raise ConnectionError(head.split(b"\r\n", 1)[0].decode("latin-1"))
            await reader.readuntil(b"data: 0 ")
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer


async def idle_streams(
    port: int,
    ctx: ssl.SSLContext | None,
    count: int,
    measure: Callable[[], Awaitable[object]],
    *,
    concurrency: int = 64,
    per_stream_timeout: float = 15.0,
    overall_timeout: float = 60.0,
) -> IdleResult:
    """Open count idle SSE streams (each has received its first event), await measure()
    while all are held open, then close them all."""
    sem = asyncio.Semaphore(concurrency)
    opened: list[asyncio.StreamWriter] = []
    errors: dict[str, int] = {}

    async def opener() -> None:
        async with sem:
            try:
                _reader, writer = await _open_idle(port, ctx, per_stream_timeout)
            except (
                OSError,
                TimeoutError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
            ) as exc:
                key = type(exc).__name__
                errors[key] = errors.get(key, 0) + 1
            else:
                opened.append(writer)

    t0 = time.monotonic()
    result = IdleResult(requested=count, established=0, errors=errors, open_seconds=0.0)
    try:
        try:
            async with asyncio.timeout(overall_timeout):
                await asyncio.gather(*(opener() for _ in range(count)))
        except TimeoutError:
            errors[f"still opening after {overall_timeout:.0f} s"] = count - len(opened)
        result.open_seconds = time.monotonic() - t0
        result.established = len(opened)
        if result.established == count:
            result.measurement = await measure()
    finally:
        # abort(), not close(): a graceful TLS close waits for the peer's close_notify,
        # which a proxy blocked on a silent upstream may never send (nginx does not).
        for writer in opened:
            writer.transport.abort()
        await asyncio.sleep(0)
    return result


def run_async(coro: Awaitable[T]) -> T:
    """Run a coroutine on uvloop if available, else the default loop."""

    async def wrapper() -> T:
        return await coro

    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return asyncio.run(wrapper())
    result: T = uvloop.run(wrapper())
    return result


# --------------------------------------------------------------------------- test (f)

RECEIPT_HEADER = "Teeproxy-Receipt"  # proxy.dataplane.receipts.RECEIPT_HEADER
RECEIPT_ID_HEADER = "Teeproxy-Receipt-Id"  # proxy.dataplane.receipts.ID_HEADER
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class KeepAlive:
    """One keep-alive HTTP(S) connection for sequential requests (http.client: blocking,
    little per-request overhead, the same for every target). http.client sends a bytes body
    in the same send() as the headers."""

    def __init__(self, port: int, ctx: ssl.SSLContext | None, timeout: float = 30.0) -> None:
        self.conn: http.client.HTTPConnection
        if ctx is None:
            self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
        else:
            self.conn = http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ctx)

    def close(self) -> None:
        self.conn.close()

    def get(self, path: str) -> tuple[int, bytes]:
        self.conn.request("GET", path)
        resp = self.conn.getresponse()
        return resp.status, resp.read()


@dataclass
class PostResult:
    """Sequential POSTs: per-request latency and what the receipt headers said."""

    latency_ms: list[float] = field(default_factory=list)
    with_receipt: int = 0
    receipt: str | None = None  # the first Teeproxy-Receipt value seen
    response: bytes = b""  # the body that receipt is about

    def extend(self, other: PostResult) -> None:
        self.latency_ms += other.latency_ms
        self.with_receipt += other.with_receipt
        if self.receipt is None:
            self.receipt, self.response = other.receipt, other.response


def timed_posts(conn: KeepAlive, path: str, body: bytes, count: int) -> PostResult:
    """count POSTs one after the other on one connection, each timed from the request's
    first byte written to the response's last byte read; any status but 200 fails."""
    result = PostResult()
    request = conn.conn.request
    clock = time.perf_counter
    for _ in range(count):
        t0 = clock()
        request("POST", path, body=body, headers=JSON_HEADERS)
        resp = conn.conn.getresponse()
        data = resp.read()
        result.latency_ms.append((clock() - t0) * 1000)
        if resp.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {resp.status}: {data[:200]!r}")
        receipt = resp.getheader(RECEIPT_HEADER)
        if receipt is not None:
            result.with_receipt += 1
            if result.receipt is None:
                result.receipt, result.response = receipt, data
    return result


@dataclass
class StreamSample:
    total_ms: float  # request written -> end of the response read
    tail_ms: float  # last data event read -> end of the response read
    after_sent_ms: float  # the backend wrote the last data event -> end of the response read
    events: int
    receipt_id: str | None
    body: bytes  # the exact body bytes (de-chunked), for checking the receipt


@dataclass
class StreamResult:
    samples: list[StreamSample] = field(default_factory=list)

    def values(self, attr: str) -> list[float]:
        return [getattr(s, attr) for s in self.samples]


def timed_stream(conn: KeepAlive, path: str, body: bytes, max_lines: int = 100_000) -> StreamSample:
    """One streamed completion (sse_server.py's POST route, whose data events carry the
    time they were written as ``"t":<float>`` at the end of their JSON), read line by line."""
    clock = time.perf_counter
    t0 = clock()
    conn.conn.request("POST", path, body=body, headers=JSON_HEADERS)
    resp = conn.conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"POST {path}: HTTP {resp.status}: {resp.read()[:200]!r}")
    rid = resp.getheader(RECEIPT_ID_HEADER)
    raw = bytearray()
    events = 0
    last_read = t0
    last_sent = 0.0
    for _ in range(max_lines):
        line = resp.readline()
        if not line:
            break
        raw += line
        if line.startswith(b'data: {"id"'):
            last_read = clock()
            events += 1
            last_sent = float(line[line.rindex(b'"t":') + 4 : line.rindex(b"}")])
    else:
        raise RuntimeError(f"POST {path}: more than {max_lines} lines")
    end, end_wall = clock(), time.time()
    if events == 0:
        raise RuntimeError(f"POST {path}: no data events in {bytes(raw[:200])!r}")
    return StreamSample(
        total_ms=(end - t0) * 1000,
        tail_ms=(end - last_read) * 1000,
        after_sent_ms=(end_wall - last_sent) * 1000,
        events=events,
        receipt_id=rid,
        body=bytes(raw),
    )
