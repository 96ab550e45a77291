"""Limits: request size limits, connection cap, and the deadlines that free stuck connections.

Timeouts are configured small (0.5 s); where timing is the behaviour the assertions allow
generous slack for a loaded machine, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from proxy.dataplane.worker import Worker
from tests.helpers.backends import Recorder, UploadProbe
from tests.helpers.proxies import ProxyFactory
from tests.helpers.rawhttp import close_writer, read_head, read_response, tls_connect, wait_closed

H = b"Host: localhost\r\n"


async def _get(port: int, client_ssl: ssl.SSLContext, target: str = "/ok") -> int:
    reader, writer = await tls_connect(port, client_ssl)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    resp = await read_response(reader)
    close_writer(writer)
    return resp.status


async def _rejected(port: int, client_ssl: ssl.SSLContext, raw: bytes) -> int:
    reader, writer = await tls_connect(port, client_ssl)
    writer.write(raw)
    resp = await read_response(reader)
    await wait_closed(reader, 5)
    close_writer(writer)
    return resp.status


# -- sizes -------------------------------------------------------------------------------------


async def test_request_line_and_header_size_limits(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(
        recording_backend.url, "[limits]\nmax_request_line = 200\nmax_header_size = 200"
    )
    fits = "/" + "a" * 150
    assert await _get(proxy.port, client_ssl, fits) == 200
    long_line = b"GET /" + b"a" * 300 + b" HTTP/1.1\r\n" + H + b"\r\n"
    assert await _rejected(proxy.port, client_ssl, long_line) == 400
    long_header = b"GET /h HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * 300 + b"\r\n\r\n"
    assert await _rejected(proxy.port, client_ssl, long_header) == 400
    long_name = b"GET /n HTTP/1.1\r\n" + H + b"X-" + b"n" * 300 + b": v\r\n\r\n"
    assert await _rejected(proxy.port, client_ssl, long_name) == 400
    assert [s.target for s in recording_backend.seen] == [fits]


async def test_header_count_limit(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[limits]\nmax_headers = 10")

    def request(n: int) -> bytes:
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(n - 1))
        return b"GET /%d HTTP/1.1\r\n" % n + H + extra + b"Connection: close\r\n\r\n"

    # Host + (n - 1) extras + Connection = n + 1 fields.
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(request(9))  # 10 fields
    assert (await read_response(reader)).status == 200
    close_writer(writer)
    assert await _rejected(proxy.port, client_ssl, request(10)) == 400  # 11 fields
    assert [s.target for s in recording_backend.seen] == ["/9"]


async def test_body_limit_by_content_length_answers_before_the_body(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[limits]\nmax_body_size = 1000")
    # No body is sent: the 413 must come from the head alone.
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /big HTTP/1.1\r\n" + H + b"Content-Length: 1001\r\n\r\n")
    resp = await read_response(reader, within=3)
    assert resp.status == 413
    assert resp.get("Connection") == "close"  # the unread body is never parsed as a request
    assert (resp.get("Content-Type") or "").startswith("application/json")
    close_writer(writer)
    # With Expect: 100-continue the client is told 413 instead of "go ahead".
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"POST /big HTTP/1.1\r\n" + H + b"Content-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(3):
        head = await read_head(reader)
    assert head.status == 413
    close_writer(writer)
    # Exactly at the limit is fine.
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /fits HTTP/1.1\r\n" + H + b"Content-Length: 1000\r\n\r\n" + b"x" * 1000)
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    assert [s.target for s in recording_backend.seen] == ["/fits"]


async def test_body_limit_on_chunked_upload_aborts_it(
    upload_probe: UploadProbe, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(upload_probe.url, "[limits]\nmax_body_size = 1000")
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"POST /big HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"258\r\n" + b"a" * 600 + b"\r\n"
    )
    async with asyncio.timeout(5):
        await upload_probe.head.wait()  # the upload is streaming to the backend
    writer.write(b"258\r\n" + b"b" * 600 + b"\r\n")
    resp = await read_response(reader, within=3)
    close_writer(writer)
    assert resp.status == 413
    async with asyncio.timeout(3):
        await upload_probe.done.wait()
    # The backend must not take the first 1000 bytes for a whole request.
    assert len(upload_probe.outcomes) == 1
    assert upload_probe.outcomes[0].startswith("aborted:"), upload_probe.outcomes


# -- connection cap ----------------------------------------------------------------------------


async def _wait_open_connections(worker: Worker, n: int) -> None:
    """The cap counts connections the server has seen close; poll its counter (bounded)."""
    assert worker.http is not None
    async with asyncio.timeout(5):
        while worker.http.open_connections != n:  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.01)


async def test_max_connections(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[limits]\nmax_connections = 2")
    held = []
    for i in range(2):
        reader, writer = await tls_connect(proxy.port, client_ssl)
        writer.write(b"GET /held%d HTTP/1.1\r\n" % i + H + b"\r\n")
        assert (await read_response(reader)).status == 200  # counted by the server now
        held.append((reader, writer))

    # A third connection is closed as soon as it is accepted, before its handshake.
    with pytest.raises(OSError):  # ssl.SSLError or a reset: no TLS session at all
        await tls_connect(proxy.port, client_ssl)

    # The two held connections are unaffected.
    for i, (reader, writer) in enumerate(held):
        writer.write(b"GET /again%d HTTP/1.1\r\n" % i + H + b"\r\n")
        assert (await read_response(reader)).status == 200

    # Once one closes, a new connection is served.
    close_writer(held[0][1])
    await _wait_open_connections(proxy.worker, 1)
    assert await _get(proxy.port, client_ssl, "/fourth") == 200
    close_writer(held[1][1])
    targets = [s.target for s in recording_backend.seen]
    assert "/third" not in targets
    assert targets[-1] == "/fourth"


async def test_max_connections_counts_handshakes_under_way(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # Two clients connect and never send a ClientHello: they hold the worker's two slots
    # until the handshake deadline, so a third connection is refused at once.
    proxy = await proxy_factory(recording_backend.url, "[limits]\nmax_connections = 2")
    silent = [await asyncio.open_connection("127.0.0.1", proxy.port) for _ in range(2)]
    servers = proxy.worker._servers
    async with asyncio.timeout(5):
        while sum(len(srv.handshakes) for srv in servers) != 2:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    with pytest.raises(OSError):
        await tls_connect(proxy.port, client_ssl)
    # One gives up: its slot is free again.
    close_writer(silent[0][1])
    async with asyncio.timeout(5):
        while sum(len(srv.handshakes) for srv in servers) != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert await _get(proxy.port, client_ssl, "/after") == 200
    close_writer(silent[1][1])
    assert [s.target for s in recording_backend.seen] == ["/after"]


# -- deadlines ---------------------------------------------------------------------------------


async def _trickle(writer: asyncio.StreamWriter, data: bytes, interval: float) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(interval)  # the slowness is the attack


async def _closed_while_trickling(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, t0: float
) -> float:
    """Trickle a request head one byte every 50 ms; seconds from t0 until the server hangs up."""
    head = b"GET / HTTP/1.1\r\n" + H + b"X-Slow: " + b"z" * 200
    trickle = asyncio.get_running_loop().create_task(_trickle(writer, head, 0.05))
    try:
        return await _closed_after(reader, t0)
    finally:
        trickle.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await trickle


async def _closed_after(reader: asyncio.StreamReader, t0: float) -> float:
    await wait_closed(reader, 5)
    return time.monotonic() - t0


async def test_header_read_timeout_slowloris(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[limits]\nheader_read_timeout = 0.5")
    # A client that keeps trickling header bytes is still cut at the deadline.
    t0 = time.monotonic()
    reader, writer = await tls_connect(proxy.port, client_ssl)
    elapsed = await _closed_while_trickling(reader, writer, t0)
    close_writer(writer)
    assert 0.4 < elapsed < 2.5, elapsed

    # A client that completes the handshake and sends nothing.
    t0 = time.monotonic()
    reader, writer = await tls_connect(proxy.port, client_ssl)
    elapsed = await _closed_after(reader, t0)
    close_writer(writer)
    assert 0.4 < elapsed < 2.5, elapsed
    assert recording_backend.seen == []


async def test_header_read_timeout_spares_keepalive_and_slow_responses(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(float(request.query.get("d", "0")))  # a slow backend, on purpose
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(
        f"http://127.0.0.1:{backend.port}", "[limits]\nheader_read_timeout = 0.5"
    )
    reader, writer = await tls_connect(proxy.port, client_ssl)
    # A response slower than the header deadline is not cut: the headers were complete.
    writer.write(b"GET /?d=1.0 HTTP/1.1\r\n" + H + b"\r\n")
    assert (await read_response(reader)).status == 200
    # Idle between requests is keepalive_timeout's business, not the header deadline's.
    await asyncio.sleep(0.8)
    writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert (await read_response(reader)).status == 200

    # The deadline applies again from the first byte of the next request.
    t0 = time.monotonic()
    elapsed = await _closed_while_trickling(reader, writer, t0)
    close_writer(writer)
    assert 0.4 < elapsed < 2.5, elapsed


async def _client_hello() -> bytes:
    """The first flight of a TLS handshake, produced in memory."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


async def test_tls_handshake_timeout(
    recording_backend: Recorder, proxy_factory: ProxyFactory
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[tls]\nhandshake_timeout = 0.5")
    hello = await _client_hello()
    assert len(hello) > 100
    for first_bytes in (b"", hello[: len(hello) // 2]):
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        t0 = time.monotonic()
        writer.write(first_bytes)
        elapsed = await _closed_after(reader, t0)
        writer.close()
        assert 0.3 < elapsed < 2.5, (len(first_bytes), elapsed)


async def test_body_read_timeout(
    upload_probe: UploadProbe, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(upload_probe.url, "[limits]\nbody_read_timeout = 0.5")
    reader, writer = await tls_connect(proxy.port, client_ssl)
    # Over the inline size: the upload streams, so the backend sees it start.
    big = b"Content-Length: 100000\r\n\r\n"
    writer.write(b"POST /up HTTP/1.1\r\n" + H + big + b"x" * 10)
    async with asyncio.timeout(5):
        await upload_probe.head.wait()
    t0 = time.monotonic()
    resp = await read_response(reader, within=5)  # and the client sends nothing more
    elapsed = time.monotonic() - t0
    close_writer(writer)
    assert resp.status == 408
    assert 0.3 < elapsed < 2.5, elapsed
    async with asyncio.timeout(3):
        await upload_probe.done.wait()
    assert len(upload_probe.outcomes) == 1
    assert upload_probe.outcomes[0].startswith("aborted:"), upload_probe.outcomes


async def test_small_body_idle_times_out_before_reaching_the_backend(
    upload_probe: UploadProbe, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # A small declared body is read whole before the backend request starts: a client that
    # stalls gets 408 and the backend never sees the request.
    proxy = await proxy_factory(upload_probe.url, "[limits]\nbody_read_timeout = 0.5")
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    t0 = time.monotonic()
    resp = await read_response(reader, within=5)
    elapsed = time.monotonic() - t0
    close_writer(writer)
    assert resp.status == 408
    assert 0.3 < elapsed < 2.5, elapsed
    assert not upload_probe.head.is_set()


async def test_small_body_cut_short_is_never_forwarded(
    upload_probe: UploadProbe, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(upload_probe.url)
    _, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /up HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    await writer.drain()
    await asyncio.sleep(0.2)  # the proxy has the headers and part of the body
    writer.transport.abort()  # the client dies mid-body
    await asyncio.sleep(0.3)
    assert not upload_probe.head.is_set()


async def test_send_timeout_cuts_a_client_that_does_not_read(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    ended = asyncio.Event()
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        await resp.prepare(request)
        chunk = b"x" * 65536
        try:
            while True:  # an endless fast stream
                await resp.write(chunk)
                sent += len(chunk)
        finally:
            ended.set()

    app = web.Application()
    app.router.add_get("/flood", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}", "[limits]\nsend_timeout = 0.5")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proxy.port))
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=client_ssl, server_hostname="localhost"
    )
    writer.write(b"GET /flood HTTP/1.1\r\n" + H + b"\r\n")
    await writer.drain()
    # Never read: the proxy's writes stall, and after send_timeout it gives up.
    async with asyncio.timeout(10):
        await ended.wait()
    # The client then finds a cut connection, not a completed response.
    head = await read_head(reader)
    assert head.status == 200
    assert head.get("Transfer-Encoding") == "chunked"
    data = await wait_closed(reader, 5)
    assert not data.endswith(b"0\r\n\r\n")
    close_writer(writer)
    assert sent > 0


async def test_keepalive_timeout(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url, "[limits]\nkeepalive_timeout = 0.5")
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    resp = await read_response(reader)
    assert resp.status == 200
    t0 = time.monotonic()
    elapsed = await _closed_after(reader, t0)
    close_writer(writer)
    assert 0.3 < elapsed < 2.5, elapsed
