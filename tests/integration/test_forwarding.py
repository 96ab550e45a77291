"""Forwarding: streaming both ways, byte-exact bodies, header rules, targets, upstream pool."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import random
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.helpers.backends import RawBackendFactory, Recorder, Seen, read_request_head
from tests.helpers.proxies import ProxyFactory
from tests.helpers.rawhttp import close_writer, read_head, read_response, tls_connect, wait_closed

MiB = 1024 * 1024


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


# -- streaming ---------------------------------------------------------------------------------


async def test_request_body_streams_to_backend_before_upload_ends(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    first_arrived = asyncio.Event()
    first_chunks: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        first_chunks.append(await request.content.readany())
        first_arrived.set()
        rest = await request.content.read()
        return web.Response(body=first_chunks[0] + rest)

    app = web.Application()
    app.router.add_post("/upload", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    seen_before_last: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"first-part;"
        # The last part is only sent once the backend has the first: a proxy that buffered
        # the whole upload would never deliver it, and this wait would time out.
        try:
            async with asyncio.timeout(5):
                await first_arrived.wait()
            seen_before_last.append(True)
        except TimeoutError:
            seen_before_last.append(False)
        yield b"last-part"

    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/upload", data=body(), ssl=client_ssl) as resp,
    ):
        assert resp.status == 200
        assert await resp.read() == b"first-part;last-part"
    assert seen_before_last == [True]
    assert first_chunks[0] == b"first-part;"


async def test_response_body_streams_to_client_before_backend_finishes(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    client_got_first = asyncio.Event()
    backend_waited: list[bool] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"token": 1}\n')
        try:
            async with asyncio.timeout(5):
                await client_got_first.wait()
            backend_waited.append(True)
        except TimeoutError:
            backend_waited.append(False)
        await resp.write(b'{"token": 2}\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/gen", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/gen", ssl=client_ssl) as resp,
    ):
        first = await resp.content.readline()
        client_got_first.set()
        rest = await resp.read()
    assert first == b'{"token": 1}\n'
    assert rest == b'{"token": 2}\n'
    assert backend_waited == [True]


async def test_large_bodies_round_trip_byte_identical(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    upload = _blob(1, 8 * MiB)
    download = _blob(2, 8 * MiB + 17)
    digests: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        h = hashlib.sha256()
        n = 0
        async for chunk in request.content.iter_any():
            h.update(chunk)
            n += len(chunk)
        digests.append(h.hexdigest())
        if request.query.get("stream"):
            resp = web.StreamResponse()
            await resp.prepare(request)
            for i in range(0, len(download), 1 * MiB):
                await resp.write(download[i : i + 1 * MiB])
            await resp.write_eof()
            return resp
        return web.Response(body=download, headers={"X-Received": str(n)})

    app = web.Application()
    app.router.add_post("/blob", handler)
    backend = await aiohttp_server(app, auto_decompress=False)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    async def chunked_upload() -> AsyncIterator[bytes]:
        for i in range(0, len(upload), 300_000):
            yield upload[i : i + 300_000]

    want_up = hashlib.sha256(upload).hexdigest()
    want_down = hashlib.sha256(download).hexdigest()
    async with aiohttp.ClientSession() as s:
        # Content-Length upload, Content-Length download.
        async with s.post(f"{proxy.url}/blob", data=upload, ssl=client_ssl) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Length"] == str(len(download))
            assert hashlib.sha256(await resp.read()).hexdigest() == want_down
        # Chunked upload, chunked (streamed) download.
        async with s.post(
            f"{proxy.url}/blob?stream=1", data=chunked_upload(), ssl=client_ssl
        ) as resp:
            assert resp.status == 200
            assert "Content-Length" not in resp.headers
            assert hashlib.sha256(await resp.read()).hexdigest() == want_down
    assert digests == [want_up, want_up]


# -- content coding passes through -----------------------------------------------------------


async def test_content_encoding_passes_through_untouched(
    recording_backend: Recorder,
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    text = b"the quick brown fox jumps over the lazy dog\n" * 500
    compressed = gzip.compress(text, mtime=0)

    async def gz(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=compressed, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    app = web.Application()
    app.router.add_get("/gz", gz)
    gz_backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{gz_backend.port}")
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.get(f"{proxy.url}/gz", ssl=client_ssl) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(compressed))
        assert await resp.read() == compressed

    proxy = await proxy_factory(recording_backend.url)
    async with aiohttp.ClientSession(skip_auto_headers=["Accept-Encoding"]) as s:
        # No Accept-Encoding from the client: none may appear upstream.
        async with s.get(f"{proxy.url}/plain", ssl=client_ssl) as resp:
            assert resp.status == 200
        # The client's own value reaches the backend verbatim.
        async with s.get(
            f"{proxy.url}/br", headers={"Accept-Encoding": "br;q=1.0, gzip;q=0.5"}, ssl=client_ssl
        ) as resp:
            assert resp.status == 200
        # A compressed request body reaches the backend still compressed.
        async with s.post(
            f"{proxy.url}/upload",
            data=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
            ssl=client_ssl,
        ) as resp:
            assert resp.status == 200
            assert await resp.text() == str(len(compressed))
    plain, br, upload = recording_backend.seen
    assert "accept-encoding" not in plain.names()
    assert br.get_all("Accept-Encoding") == ["br;q=1.0, gzip;q=0.5"]
    assert upload.get_all("Content-Encoding") == ["gzip"]
    assert upload.body == compressed


# -- header rules ------------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_stripped(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"GET /hop HTTP/1.1\r\n"
        b"Host: localhost\r\n"
        b"Connection: close, X-Secret-Hop\r\n"
        b"X-Secret-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Authorization: Bearer token\r\n"
        b"X-End-To-End: kept\r\n"
        b"Cache-Control: no-cache\r\n"
        b"\r\n"
    )
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    (seen,) = recording_backend.seen
    hop = {
        "connection",
        "x-secret-hop",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
        "transfer-encoding",
    }
    assert not (seen.names() & hop), seen.headers
    assert seen.get_all("Authorization") == ["Bearer token"]
    assert seen.get_all("X-End-To-End") == ["kept"]
    assert seen.get_all("Cache-Control") == ["no-cache"]
    assert seen.get_all("Host") == ["localhost"]
    # The upstream client adds nothing of its own.
    assert not (seen.names() & {"accept", "accept-encoding", "user-agent", "content-type"})


async def test_non_websocket_upgrade_is_not_forwarded(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # An upgrade the proxy does not relay (h2c) is a plain request: the backend never sees
    # the offer, the client gets the backend's answer, and the connection stays HTTP/1.1.
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"GET /h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    )
    resp = await read_response(reader)
    assert resp.status == 200
    writer.write(b"GET /after HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_response(reader)).status == 200
    close_writer(writer)
    first, second = recording_backend.seen
    assert not (first.names() & {"connection", "upgrade", "http2-settings"}), first.headers
    assert second.target == "/after"


async def test_hop_by_hop_response_headers_are_stripped(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Length: 2\r\n"
            b"Content-Type: text/plain\r\n"
            b"Connection: X-Resp-Hop\r\n"
            b"X-Resp-Hop: secret\r\n"
            b"Keep-Alive: timeout=3\r\n"
            b"Proxy-Authenticate: Basic realm=x\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"Trailer: X-Checksum\r\n"
            b"Upgrade: h2c\r\n"
            b"X-Resp-E2E: kept\r\n"
            b"Cache-Control: no-store\r\n"
            b"Set-Cookie: a=1\r\n"
            b"Set-Cookie: b=2\r\n"
            b"\r\n"
            b"ok"
        )
        await writer.drain()
        await reader.read()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    assert resp.body == b"ok"
    hop = {
        "x-resp-hop",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "trailer",
        "upgrade",
    }
    assert not (resp.names() & hop), resp.headers
    # The proxy may state its own connection handling, never relay the backend's list.
    assert all(v.lower() in ("close", "keep-alive") for v in resp.get_all("Connection"))
    assert resp.get_all("X-Resp-E2E") == ["kept"]
    assert resp.get_all("Cache-Control") == ["no-store"]
    assert resp.get_all("Set-Cookie") == ["a=1", "b=2"]


async def test_provenance_headers_are_replaced(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"GET /fwd HTTP/1.1\r\n"
        b"Host: api.example.test\r\n"
        b"X-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-For: 10.0.0.2, 10.0.0.3\r\n"
        b"x-forwarded-for: 10.0.0.4\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"X-Forwarded-Host: evil.test\r\n"
        b"X-Forwarded-Host: evil2.test\r\n"
        b"Forwarded: for=10.0.0.1;proto=http\r\n"
        b"Forwarded: for=10.0.0.9;host=evil.test\r\n"
        b"X-Real-IP: 10.0.0.1\r\n"
        b"\r\n"
    )
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    (seen,) = recording_backend.seen
    assert seen.get_all("X-Forwarded-For") == ["127.0.0.1"]
    assert seen.get_all("X-Forwarded-Proto") == ["https"]
    assert seen.get_all("X-Forwarded-Host") == ["api.example.test"]
    assert seen.get_all("Forwarded") == ["for=127.0.0.1;proto=https;host=api.example.test"]
    assert "x-real-ip" not in seen.names()
    assert seen.get_all("Host") == ["api.example.test"]


async def test_raw_target_reaches_backend_unchanged(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # Percent-encoding (including an encoded slash and an invalid escape), empty query
    # parameters, '+', doubled slashes and dot segments are the backend's to interpret: the
    # proxy does not route on the path, so any rewriting could only create a mismatch.
    targets = [
        "/a%2Fb?x=1%20&y=%zz",
        "/v1/%7Euser/..%2f/x//y/./z/../w?q=a+b&&empty=&k=%E2%82%AC",
        "/%00?%00",
    ]
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    for target in targets:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        resp = await read_response(reader)
        assert resp.status == 200, target
    # Absolute-form is reduced to origin-form; the Host header is what the client sent.
    writer.write(b"GET http://localhost/abs%2Fpath?z=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 200
    # Not even an empty query's "?" is dropped (yarl, under the previous client, did).
    writer.write(b"GET /empty? HTTP/1.1\r\nHost: localhost\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 200
    close_writer(writer)
    assert [s.target for s in recording_backend.seen] == [
        *targets,
        "/abs%2Fpath?z=1",
        "/empty?",
    ]


async def test_head_204_and_304_keep_the_connection_framed(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/no-content":
            return web.Response(status=204, headers={"X-Kind": "204"})
        if request.path == "/not-modified":
            return web.Response(status=304, headers={"ETag": '"v1"'})
        return web.Response(body=b"x" * 1234, headers={"X-Kind": "full"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")
    reader, writer = await tls_connect(proxy.port, client_ssl)

    # Each response is followed on the same connection by a GET whose body must parse
    # exactly: any stray body byte after HEAD/204/304 would corrupt the next response.
    writer.write(b"HEAD /doc HTTP/1.1\r\nHost: localhost\r\n\r\n")
    resp = await read_response(reader, method="HEAD")
    assert resp.status == 200
    assert resp.get("Content-Length") == "1234"
    assert resp.get("Transfer-Encoding") is None

    writer.write(b"GET /no-content HTTP/1.1\r\nHost: localhost\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 204
    assert resp.get("X-Kind") == "204"
    assert resp.get("Transfer-Encoding") is None
    assert resp.get("Content-Length") in (None, "0")

    writer.write(b'GET /not-modified HTTP/1.1\r\nHost: localhost\r\nIf-None-Match: "v1"\r\n\r\n')
    resp = await read_response(reader)
    assert resp.status == 304
    assert resp.get("ETag") == '"v1"'
    assert resp.get("Transfer-Encoding") is None

    writer.write(b"GET /doc HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 200
    assert resp.body == b"x" * 1234
    assert await reader.read() == b""  # nothing left over on the connection
    close_writer(writer)


async def test_expect_100_continue(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(
        b"POST /expect HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    # The body is withheld until the interim response arrives.
    async with asyncio.timeout(5):
        interim = await read_head(reader)
    assert interim.status == 100
    writer.write(b"hello")
    resp = await read_response(reader)
    close_writer(writer)
    assert resp.status == 200
    assert resp.body == b"5"
    (seen,) = recording_backend.seen
    assert seen.body == b"hello"
    assert "expect" not in seen.names()  # answered by the proxy, not forwarded


# -- client disconnects reach the backend ----------------------------------------------------


async def test_client_disconnect_mid_stream_cancels_upstream(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    cancelled = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: 0\n\n")
        try:
            await asyncio.Event().wait()  # a generation that never ends on its own
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return resp

    app = web.Application()
    app.router.add_get("/stream", handler)
    backend = await aiohttp_server(app)  # handler_cancellation: cancelled on disconnect
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await read_head(reader)
    assert head.status == 200
    async with asyncio.timeout(5):
        assert b"data: 0" in await reader.readuntil(b"\n\n")
    t0 = time.monotonic()
    close_writer(writer)
    async with asyncio.timeout(5):
        await cancelled.wait()
    # Nothing else would end this request: the backend is silent, idle_timeout is 600 s.
    assert time.monotonic() - t0 < 1.5


async def test_client_disconnect_before_response_headers_reaches_backend(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        started.set()
        try:
            await asyncio.Event().wait()  # thinking forever before answering
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return web.Response()

    app = web.Application()
    app.router.add_post("/slow", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    _, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"POST /slow HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
    async with asyncio.timeout(5):
        await started.wait()
    t0 = time.monotonic()
    close_writer(writer)
    async with asyncio.timeout(5):
        await cancelled.wait()
    assert time.monotonic() - t0 < 1.5


# -- backend transports and the upstream pool ------------------------------------------------


async def test_unix_socket_backend(
    proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext, tmp_path: Path
) -> None:
    rec = Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        rec.seen.append(
            Seen(
                request.method,
                request.raw_path,
                [(k.decode(), v.decode()) for k, v in request.raw_headers],
                port=0,
                body=await request.read(),
                complete=True,
            )
        )
        return web.Response(text="via unix")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    sock_path = tmp_path / "backend.sock"
    site = web.UnixSite(runner, str(sock_path))
    await site.start()
    try:
        proxy = await proxy_factory(f"unix:{sock_path}")
        async with (
            aiohttp.ClientSession() as s,
            s.post(f"{proxy.url}/v1/x?y=1", data=b"payload", ssl=client_ssl) as resp,
        ):
            assert resp.status == 200
            assert await resp.text() == "via unix"
    finally:
        await runner.cleanup()
    (seen,) = rec.seen
    assert seen.target == "/v1/x?y=1"
    assert seen.body == b"payload"
    assert seen.get_all("X-Forwarded-For") == ["127.0.0.1"]


async def test_upstream_connections_are_reused(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    # Five sequential requests, each on its own client connection.
    for i in range(5):
        reader, writer = await tls_connect(proxy.port, client_ssl)
        writer.write(f"GET /{i} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        resp = await read_response(reader)
        assert resp.status == 200
        close_writer(writer)
    assert [s.target for s in recording_backend.seen] == [f"/{i}" for i in range(5)]
    ports = {s.port for s in recording_backend.seen}
    assert len(ports) == 1, ports


async def test_upstream_pool_is_bounded(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    inflight = 0
    peak = 0
    ports: set[int] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal inflight, peak
        assert request.transport is not None
        ports.add(request.transport.get_extra_info("peername")[1])
        inflight += 1
        peak = max(peak, inflight)
        try:
            await asyncio.sleep(0.3)  # a slow generation: concurrency is the behaviour here
        finally:
            inflight -= 1
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}", "[backend]\npool_size = 2")

    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            async with s.get(f"{proxy.url}/slow", ssl=client_ssl) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(one() for _ in range(5)))
    assert statuses == [200] * 5
    assert peak == 2
    assert len(ports) <= 2, ports


async def test_proxy_adds_no_content_type_the_backend_did_not_send(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def no_type(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()

    be = await raw_backend(no_type)
    proxy = await proxy_factory(be.url)
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/x", ssl=client_ssl) as resp,
    ):
        assert await resp.read() == b"hello"
        assert "Content-Type" not in resp.headers


# -- absolute-form targets ---------------------------------------------------------------------


async def test_absolute_form_authority_replaces_host(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # RFC 9112 3.2.2: the target's authority is the request's host, whatever Host says; a
    # proxy forwarding it generates Host from the target. The backend sees one consistent
    # authority (Host, X-Forwarded-Host, Forwarded) and an origin-form target.
    proxy = await proxy_factory(recording_backend.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET http://other.example:8443/a?b=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_response(reader)).status == 200
    writer.write(b"GET https://other.example HTTP/1.1\r\nHost: other.example\r\n\r\n")
    assert (await read_response(reader)).status == 200
    close_writer(writer)
    first, second = recording_backend.seen
    assert first.target == "/a?b=1"
    assert first.get_all("Host") == ["other.example:8443"]
    assert first.get_all("X-Forwarded-Host") == ["other.example:8443"]
    assert first.get_all("Forwarded") == ['for=127.0.0.1;proto=https;host="other.example:8443"']
    assert (second.target, second.get_all("Host")) == ("/", ["other.example"])


async def test_absolute_form_with_userinfo_or_no_host_is_refused(
    recording_backend: Recorder, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(recording_backend.url)
    for target in (b"http://user:pw@other.example/", b"http:///nohost"):
        reader, writer = await tls_connect(proxy.port, client_ssl)
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
        resp = await read_response(reader)
        close_writer(writer)
        assert resp.status == 400, target
    assert recording_backend.seen == []


# -- the response relay: framing ---------------------------------------------------------------


async def _read_raw_chunked(reader: asyncio.StreamReader) -> bytes:
    """The chunked body exactly as it came over the wire, up to and including 0 CRLF CRLF."""
    raw = bytearray()
    async with asyncio.timeout(5):
        while not raw.endswith(b"\r\n0\r\n\r\n") and raw != b"0\r\n\r\n":
            raw += await reader.read(65536)
    return bytes(raw)


async def test_chunked_framing_passes_through_validated(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # The backend's chunks arrive as it framed them (sizes as written, one byte at a time
    # here), except that extensions and trailers are dropped; the connection stays usable.
    framing = (
        b"5\r\nhello\r\n00006;ext=1\r\n world\r\nA\r\n0123456789\r\n"
        b"0;end\r\nX-Trailer: secret\r\n\r\n"
    )

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            await read_request_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(len(framing)):
                writer.write(framing[i : i + 1])
                await writer.drain()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    for _ in range(2):
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head = await read_head(reader)
        assert head.status == 200
        assert head.get_all("Transfer-Encoding") == ["chunked"]
        assert await _read_raw_chunked(reader) == (
            b"5\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\n\r\n"
        )
    close_writer(writer)
    assert be.connections == 1  # the backend connection went back to the pool and was reused


async def test_http10_client_gets_the_body_de_chunked_and_close_delimited(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(CHUNKED_RESPONSE)
        await writer.drain()
        await reader.read()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
    head = await read_head(reader)
    assert head.status == 200
    assert head.get("Transfer-Encoding") is None and head.get("Content-Length") is None
    assert await wait_closed(reader, 5) == b"hello world"
    close_writer(writer)


async def test_close_delimited_backend_body_reaches_an_http11_client_chunked(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" world")
        await writer.drain()
        writer.close()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    resp = await read_response(reader)
    assert resp.status == 200 and resp.get("Transfer-Encoding") == "chunked"
    assert resp.body == b"hello world"
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")  # still a usable connection
    assert (await read_response(reader)).status == 200
    close_writer(writer)


CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


async def test_bytes_after_a_response_keep_its_connection_out_of_the_pool(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request_head(reader)
            # A body longer than its Content-Length: the rest would parse as the next
            # response, so this connection must never carry another request.
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n")
            await writer.drain()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    for _ in range(3):
        reader, writer = await tls_connect(proxy.port, client_ssl)
        writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        resp = await read_response(reader)
        close_writer(writer)
        assert (resp.status, resp.body) == (200, b"ok")
    assert be.connections == 3


async def test_idempotent_request_is_retried_once_on_a_stale_pooled_connection(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # The first connection answers once, then drops the next request unanswered (a keep-
    # alive connection the backend closed as it was reused): a GET is sent again on a new
    # connection; a POST, which may not be repeated, gets 502 (RFC 9110 9.2.2).
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = be.connections == 1
        while True:
            head = await read_request_head(reader)
            if first and b"/second" in head:
                return  # closes without answering
            body = b"via %d" % be.connections
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_response(reader)).body == b"via 1"
    writer.write(b"GET /second HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_response(reader)).body == b"via 2"
    close_writer(writer)
    assert be.connections == 2

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert (await read_response(reader)).status == 200
    writer.write(b"POST /second HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
    assert (await read_response(reader)).status == 502
    close_writer(writer)
    assert be.connections == 1


async def test_a_client_that_reads_slowly_gets_every_byte_and_pauses_the_backend(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    """Flow control: while the client does not read, the proxy stops reading from the
    backend (bounded buffering, not 64 MiB in memory); when it reads again, the relay
    resumes and every byte arrives in order."""
    total = 64 * MiB
    chunk = _blob(3, 1 * MiB)
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        await resp.prepare(request)
        while sent < total:
            await resp.write(chunk)
            sent += len(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/big", handler)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}", "[limits]\nsend_timeout = 10")
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await read_head(reader)
    assert head.status == 200
    await asyncio.sleep(1.0)  # not reading: everything between the two ends fills up
    stalled_at = sent
    await asyncio.sleep(0.5)
    assert sent == stalled_at  # the backend's writes wait: the proxy stopped reading
    assert sent < 24 * MiB, sent  # socket buffers on both sides, and little in the proxy
    digest = hashlib.sha256()
    n = 0
    async with asyncio.timeout(30):
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                break
            data = await reader.readexactly(size)
            digest.update(data)
            n += size
            assert await reader.readexactly(2) == b"\r\n"
    close_writer(writer)
    assert n == total
    assert digest.hexdigest() == hashlib.sha256(chunk * 64).hexdigest()
