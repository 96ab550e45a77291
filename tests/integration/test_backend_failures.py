"""Backend failures: clean 502/504 JSON errors before the response starts, a cut connection
after it started (so a truncated body never looks complete), and never a hang."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import Iterator

import aiohttp
import pytest

from tests.helpers.backends import RawBackendFactory, RawHandler, read_request_head
from tests.helpers.proxies import ProxyFactory
from tests.helpers.rawhttp import close_writer, read_response, tls_connect


async def _get_json_error(
    url: str, client_ssl: ssl.SSLContext, method: str = "GET", data: bytes | None = None
) -> tuple[int, dict[str, object]]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, url, data=data, ssl=client_ssl, timeout=aiohttp.ClientTimeout(total=10)
        ) as resp,
    ):
        assert resp.content_type == "application/json"
        body = json.loads(await resp.read())
        return resp.status, body["error"]


async def _read_body(url: str, client_ssl: ssl.SSLContext) -> tuple[int, bytes]:
    """GET and read the whole body; raises what the client sees for a broken body."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(url, ssl=client_ssl, timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        return resp.status, await resp.read()


# -- before the response starts: 502 / 504 ---------------------------------------------------


async def test_backend_down_gives_502(
    proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    # A port that was just free: nothing listens there.
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    proxy = await proxy_factory(f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    status, error = await _get_json_error(f"{proxy.url}/v1/models", client_ssl)
    assert status == 502
    assert error["type"] == "backend_unavailable"
    assert error["code"] == 502
    assert time.monotonic() - t0 < 3


async def test_unix_backend_missing_gives_502(
    proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext, tmp_path: object
) -> None:
    proxy = await proxy_factory(f"unix:{tmp_path}/nothing-here.sock")
    status, error = await _get_json_error(f"{proxy.url}/", client_ssl)
    assert status == 502
    assert error["type"] == "backend_unavailable"


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """A listening port whose accept queue is full, so a new connect hangs in SYN_SENT.

    Linux drops a SYN when the accept queue of a listener is full (and nobody accepts).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def _connect_hangs(port: int) -> bool:
    try:
        async with asyncio.timeout(0.3):
            _, w = await asyncio.open_connection("127.0.0.1", port)
    except TimeoutError:
        return True
    w.close()
    return False


async def test_connect_timeout_gives_504(
    full_backlog: int, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    if not await _connect_hangs(full_backlog):
        pytest.skip("this kernel completes connects to a full accept queue")
    proxy = await proxy_factory(
        f"http://127.0.0.1:{full_backlog}", "[backend]\nconnect_timeout = 0.5"
    )
    t0 = time.monotonic()
    status, error = await _get_json_error(f"{proxy.url}/", client_ssl)
    elapsed = time.monotonic() - t0
    assert status == 504
    assert error["type"] == "backend_timeout"
    assert "connect" in str(error["message"])
    assert 0.4 < elapsed < 3, elapsed


async def _silent_after_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    await reader.read()  # never answers; returns when the proxy hangs up


async def test_response_header_timeout_gives_504(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    be = await raw_backend(_silent_after_head)
    proxy = await proxy_factory(be.url, "[backend]\nresponse_header_timeout = 0.5")
    t0 = time.monotonic()
    status, error = await _get_json_error(f"{proxy.url}/", client_ssl)
    elapsed = time.monotonic() - t0
    assert status == 504
    assert error["type"] == "backend_timeout"
    assert "headers" in str(error["message"])
    assert 0.4 < elapsed < 3, elapsed


INVALID_RESPONSES = {
    "garbage": b"this is not http\r\n\r\n",
    "bad-status": b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
    "bad-version": b"HTTP/7.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello",
    "closed-before-headers": b"",
    "closed-mid-headers": b"HTTP/1.1 200 OK\r\nContent-Le",
    "te-gzip-chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "unexpected-101": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n"
    b"\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\nhello\r\n0\r\n\r\n",
    # A chunk-size line over limits.max_chunk_line (4096), with the head in one write.
    "chunk-line-over-limit": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;"
    + b"e" * 5000
    + b"\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("raw", INVALID_RESPONSES.values(), ids=INVALID_RESPONSES.keys())
async def test_invalid_backend_response_gives_502(
    raw: bytes,
    raw_backend: RawBackendFactory,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(raw)
        await writer.drain()
        writer.close()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    t0 = time.monotonic()
    status, error = await _get_json_error(
        f"{proxy.url}/v1/completions", client_ssl, "POST", b'{"prompt": "hi"}'
    )
    assert status == 502
    assert error["type"] == "backend_unavailable"
    assert time.monotonic() - t0 < 3
    # A non-idempotent request is never replayed (RFC 9112 9.3.1). (aiohttp's client does
    # retry an idempotent one once when the connection drops before a response.)
    assert be.connections == 1


# -- after the response started: the client connection is cut -------------------------------


def _partial(head: bytes, body: bytes, *, close: bool) -> RawHandler:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(head + body)
        await writer.drain()
        if close:
            writer.close()
        else:
            await reader.read()  # stall until the proxy hangs up

    return backend


CL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\n"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "body"),
    [(CL_HEAD, b"0123456789"), (CHUNKED_HEAD, b"a\r\n0123456789\r\n")],
    ids=["content-length", "chunked"],
)
async def test_backend_closing_mid_body_is_an_error_for_the_client(
    head: bytes,
    body: bytes,
    raw_backend: RawBackendFactory,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    be = await raw_backend(_partial(head, body, close=True))
    proxy = await proxy_factory(be.url)
    t0 = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        await _read_body(f"{proxy.url}/", client_ssl)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize(
    "broken",
    [b"zz\r\nhello\r\n", b"5;" + b"e" * 5000 + b"\r\nhello\r\n", b"3\r\nhello\r\n"],
    ids=["bad-size", "chunk-line-over-limit", "data-longer-than-size"],
)
async def test_invalid_chunked_framing_mid_body_cuts_the_client(
    broken: bytes,
    raw_backend: RawBackendFactory,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(CHUNKED_HEAD + b"a\r\n0123456789\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)  # the head and first chunk are at the client by now
        writer.write(broken + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    t0 = time.monotonic()
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with (
            aiohttp.ClientSession() as s,
            s.get(proxy.url, ssl=client_ssl, timeout=aiohttp.ClientTimeout(total=10)) as resp,
        ):
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                got += chunk
    assert got == b"0123456789"  # what was valid arrived; nothing after the broken line
    assert time.monotonic() - t0 < 3


async def test_interim_responses_are_dropped(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        await writer.drain()
        await reader.read()

    be = await raw_backend(backend)
    proxy = await proxy_factory(be.url)
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    assert await reader.readexactly(4) == b"body"
    close_writer(writer)


@pytest.mark.parametrize(
    ("head", "body"),
    [(CL_HEAD, b"0123456789"), (CHUNKED_HEAD, b"a\r\n0123456789\r\n")],
    ids=["content-length", "chunked"],
)
async def test_idle_timeout_mid_body_aborts_the_client(
    head: bytes,
    body: bytes,
    raw_backend: RawBackendFactory,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
) -> None:
    be = await raw_backend(_partial(head, body, close=False))
    proxy = await proxy_factory(be.url, "[backend]\nidle_timeout = 0.5")
    t0 = time.monotonic()
    reader, writer = await tls_connect(proxy.port, client_ssl)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    # A raw read shows exactly what arrived: the partial body, then a cut connection.
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError, ssl.SSLError)):
        await read_response(reader, within=5)
    elapsed = time.monotonic() - t0
    close_writer(writer)
    assert 0.4 < elapsed < 3, elapsed
    # And a client library reports it as a payload error, not a short body.
    with pytest.raises(aiohttp.ClientPayloadError):
        await _read_body(f"{proxy.url}/", client_ssl)


async def _endless_trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    writer.write(CHUNKED_HEAD)
    while True:  # one event every 100 ms, forever: never idle, never done
        writer.write(b"6\r\ndata: \r\n")
        await writer.drain()
        await asyncio.sleep(0.1)


async def test_total_timeout_mid_stream_aborts_the_client(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    be = await raw_backend(_endless_trickle)
    proxy = await proxy_factory(be.url, "[backend]\ntotal_timeout = 1.0\nidle_timeout = 0.5")
    t0 = time.monotonic()
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with (
            aiohttp.ClientSession() as s,
            s.get(proxy.url, ssl=client_ssl, timeout=aiohttp.ClientTimeout(total=10)) as resp,
        ):
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                got += chunk
    elapsed = time.monotonic() - t0
    assert got.startswith(b"data: ")  # the stream did flow until the cap
    assert 0.9 < elapsed < 3, elapsed


async def test_total_timeout_before_headers_gives_504(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    be = await raw_backend(_silent_after_head)
    proxy = await proxy_factory(be.url, "[backend]\ntotal_timeout = 0.5")
    t0 = time.monotonic()
    status, error = await _get_json_error(f"{proxy.url}/", client_ssl)
    elapsed = time.monotonic() - t0
    assert status == 504
    assert error["type"] == "backend_timeout"
    assert "total" in str(error["message"])
    assert 0.4 < elapsed < 3, elapsed


async def test_what_the_proxy_answers_itself_says_server_teeproxy(
    raw_backend: RawBackendFactory, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    """502, 504 and 413 from the forwarder and aiohttp's own 400 for an unparsable request
    carry one Server value, without a version; a relayed response keeps the backend's."""
    srv = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    down = await proxy_factory(f"http://127.0.0.1:{port}", "[limits]\nmax_body_size = 10")
    silent = await raw_backend(_silent_after_head)
    slow = await proxy_factory(silent.url, "[backend]\nresponse_header_timeout = 0.3")

    async def named(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nServer: backend/9\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()

    relayed = await proxy_factory((await raw_backend(named)).url)
    answers: list[tuple[int, list[str]]] = []
    for port_, raw in [
        (down.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),  # 502
        (slow.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),  # 504
        (down.port, b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\n\r\n"),
        (down.port, b"GET / HTTP/9.9\r\nHost: localhost\r\n\r\n"),  # aiohttp's 400
        (relayed.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    ]:
        reader, writer = await tls_connect(port_, client_ssl)
        writer.write(raw)
        resp = await read_response(reader)
        close_writer(writer)
        answers.append((resp.status, resp.get_all("Server")))
    assert answers == [
        (502, ["teeproxy"]),
        (504, ["teeproxy"]),
        (413, ["teeproxy"]),
        (400, ["teeproxy"]),
        (200, ["backend/9"]),
    ]
