"""proxy.dataplane.protocol: the limits aiohttp's server lacks, on a plain loopback listener.

The header-read deadline (slowloris), on the first request and again on each kept-alive
one; the per-worker connection cap; new limits for new connections only; a body whose
framing breaks mid-upload fails the handler's stream at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from proxy.config import LimitsConfig
from proxy.dataplane.protocol import ProxyHTTPServer

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Listen = Callable[..., Awaitable[tuple[ProxyHTTPServer, int]]]


async def _ok(_request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


@pytest.fixture
async def listen() -> AsyncIterator[Listen]:
    servers: list[asyncio.base_events.Server] = []

    async def go(limits: LimitsConfig, handler: Handler = _ok) -> tuple[ProxyHTTPServer, int]:
        http = ProxyHTTPServer(handler, limits, tls=False)
        srv = await asyncio.get_running_loop().create_server(http, "127.0.0.1", 0)
        servers.append(srv)
        return http, srv.sockets[0].getsockname()[1]

    yield go
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closes the connection (EOF), failing after ``seconds``."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    assert data == b"" or data.startswith(b"HTTP/1.1 4")  # closed, maybe after a 4xx
    return time.monotonic() - started


async def test_incomplete_headers_are_cut_at_the_deadline(listen: Listen) -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        _, port = await listen(LimitsConfig(header_read_timeout=0.3))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finishes the header block
        await writer.drain()
        waited = await _closed_within(reader, 5)
        assert 0.2 < waited < 3
        writer.close()
        await asyncio.sleep(0.05)
    finally:
        loop.set_exception_handler(None)
    assert errors == []  # the deadline's callback closed the connection without raising


async def _kept_alive(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection that has had one request answered (200 "ok") and stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    await reader.readexactly(2)  # "ok"
    return reader, writer


async def _stall_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    """Start the next request and never finish its headers: seconds until it was cut."""
    writer.write(b"GET / HTTP/1.1\r\n")
    await writer.drain()
    waited = await _closed_within(reader, 5)
    writer.close()
    return waited


async def test_the_deadline_rearms_for_each_kept_alive_request(listen: Listen) -> None:
    _, port = await listen(LimitsConfig(header_read_timeout=0.3, keepalive_timeout=30))
    reader, writer = await _kept_alive(port)
    await asyncio.sleep(0.5)  # idle between requests is keep-alive time, not header time
    assert await _stall_next(reader, writer) < 3


async def test_a_deadline_set_for_an_earlier_request_does_not_cut_a_later_one(
    listen: Listen,
) -> None:
    # One timer per connection: armed at the connection's start for 0.6 s, it fires while
    # the second request (begun at 0.4 s) is still within its own 0.6 s, and must move on.
    _, port = await listen(LimitsConfig(header_read_timeout=0.6, keepalive_timeout=30))
    reader, writer = await _kept_alive(port)
    await asyncio.sleep(0.4)
    assert 0.45 < await _stall_next(reader, writer) < 3


async def test_a_shorter_deadline_after_a_reload_holds_on_a_kept_alive_connection(
    listen: Listen,
) -> None:
    # The timer armed for 30 s must not outlive a reload that shortened the limit to 0.3 s.
    http, port = await listen(LimitsConfig(header_read_timeout=30, keepalive_timeout=30))
    reader, writer = await _kept_alive(port)
    http.update_limits(LimitsConfig(header_read_timeout=0.3, keepalive_timeout=30))
    assert await _stall_next(reader, writer) < 3


async def test_connections_over_the_cap_are_closed_at_once(listen: Listen) -> None:
    http, port = await listen(LimitsConfig(max_connections=1, header_read_timeout=30))
    _r1, w1 = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(100):
        if http.open_connections == 1:
            break
        await asyncio.sleep(0.01)
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    assert await asyncio.wait_for(r2.read(), 5) == b""
    assert http.open_connections == 1
    w1.close()
    w2.close()
    for _ in range(100):  # the slot is given back when the first one goes
        if http.open_connections == 0:
            break
        await asyncio.sleep(0.01)
    assert http.open_connections == 0


async def test_new_limits_apply_to_new_connections(listen: Listen) -> None:
    http, port = await listen(LimitsConfig(header_read_timeout=30))
    http.update_limits(dataclasses.replace(http.limits, header_read_timeout=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\n")
    await writer.drain()
    assert await _closed_within(reader, 5) < 3
    writer.close()


async def test_a_body_whose_framing_breaks_fails_the_handlers_stream(listen: Listen) -> None:
    outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def reader_handler(request: web.BaseRequest) -> web.StreamResponse:
        try:
            while await request.content.readany():
                pass
        except Exception as e:  # the test records what the handler saw
            outcome.set_result(type(e).__name__)
            raise
        outcome.set_result("eof")
        return web.Response(text="ok")

    _, port = await listen(LimitsConfig(body_read_timeout=30), reader_handler)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is streaming the body now
    writer.write(b"zz-not-hex\r\n")
    await writer.drain()
    # At once, not after body_read_timeout (30 s).
    assert await asyncio.wait_for(outcome, 5) == "RequestPayloadError"
    writer.close()


async def test_handlers_run_in_a_task_of_their_own_on_the_requests_loop(listen: Listen) -> None:
    """The forwarder's backend deadline cancels the task the handler runs in, found on the
    loop of ``request.task`` (the connection's task, not the handler's: aiohttp runs each
    request's handler in a new task)."""
    seen: list[tuple[bool, bool]] = []

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        me = asyncio.current_task()
        seen.append((request.task.get_loop() is asyncio.get_running_loop(), request.task is me))
        return web.Response(text="ok")

    _, port = await listen(LimitsConfig(), handler)
    reader, writer = await _kept_alive(port)
    writer.write(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.close()
    assert seen == [(True, False), (True, False)]
