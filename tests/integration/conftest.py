"""Fixtures and helpers for the forwarding, smuggling, limits, WebSocket and failure tests.

- ``recording_backend``: an aiohttp backend that records every request it receives (raw
  target, raw headers, body, the proxy-side port) and answers 200 with the body length.
- ``raw_backend``: a plain asyncio TCP server driven by a test-supplied coroutine, for
  byte-level control of what the "backend" sends.
- ``tls_connect`` / ``read_response`` / ``wait_closed``: a hand-written HTTP/1.1 client over
  TLS, for requests that no well-behaved client library would send.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

# -- recording aiohttp backend ---------------------------------------------------------------


@dataclass
class Seen:
    """One request as the backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    port: int
    body: bytes = b""
    complete: bool = False

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


@dataclass
class Recorder:
    """What the recording backend saw; ``arrived`` is set when any request starts."""

    url: str = ""
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def completed(self) -> list[Seen]:
        return [s for s in self.seen if s.complete]


async def _record(rec: Recorder, request: web.BaseRequest) -> web.StreamResponse:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    seen = Seen(
        method=request.method,
        target=request.raw_path,
        headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers],
        port=peer[1] if isinstance(peer, tuple) else 0,
    )
    rec.seen.append(seen)
    rec.arrived.set()
    seen.body = await request.read()
    seen.complete = True
    return web.Response(text=f"{len(seen.body)}", headers={"X-Seen": str(len(rec.seen))})


@pytest.fixture
async def recording_backend(aiohttp_server: AiohttpServer) -> Recorder:
    """An aiohttp backend (no request decompression) recording every request."""
    rec = Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _record(rec, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app, auto_decompress=False)
    rec.url = f"http://127.0.0.1:{server.port}"
    return rec


# -- upload probe ---------------------------------------------------------------------------


@dataclass
class UploadProbe:
    """A backend that reports how each upload ended: ``complete:<n>`` or ``aborted:<exc>``.

    ``head`` is set once a request reached the backend, ``done`` once its body read ended.
    """

    url: str = ""
    head: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    outcomes: list[str] = field(default_factory=list)


@pytest.fixture
async def upload_probe(aiohttp_server: AiohttpServer) -> UploadProbe:
    probe = UploadProbe()

    async def handler(request: web.Request) -> web.StreamResponse:
        probe.head.set()
        try:
            body = await request.read()
        except BaseException as e:
            probe.outcomes.append(f"aborted:{type(e).__name__}")
            raise
        else:
            probe.outcomes.append(f"complete:{len(body)}")
        finally:
            probe.done.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)  # handler_cancellation: a cut upload cancels it
    probe.url = f"http://127.0.0.1:{server.port}"
    return probe


# -- raw TCP backend -------------------------------------------------------------------------

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawBackend:
    port: int
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


RawBackendFactory = Callable[[RawHandler], Awaitable[RawBackend]]


@pytest.fixture
async def raw_backend() -> AsyncIterator[RawBackendFactory]:
    """Start plain TCP servers on loopback: ``await raw_backend(handler)``."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> RawBackend:
        backend = RawBackend(port=0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            backend.connections += 1
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(srv)
        backend.port = srv.sockets[0].getsockname()[1]
        return backend

    yield start
    for w in writers:
        w.close()
    for srv in servers:
        srv.close()
        await srv.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """Read one request's head (through the blank line) on a raw backend connection."""
    return await reader.readuntil(b"\r\n\r\n")


# -- raw HTTP/1.1 client over TLS ------------------------------------------------------------


async def tls_connect(
    port: int, client_ssl: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost"
    )


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def get(self, name: str) -> str | None:
        values = self.get_all(name)
        return values[0] if values else None

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def names(self) -> set[str]:
        return {n.lower() for n, _ in self.headers}


async def read_head(reader: asyncio.StreamReader) -> RawResponse:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version in ("HTTP/1.1", "HTTP/1.0"), lines[0]
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name, value.strip()))
    return RawResponse(int(status), reason[0] if reason else "", headers)


async def read_response(
    reader: asyncio.StreamReader, *, method: str = "GET", within: float = 5.0
) -> RawResponse:
    """Read one response, framing its body by the rules a client must apply (RFC 9112 6.3)."""
    async with asyncio.timeout(within):
        resp = await read_head(reader)
        while 100 <= resp.status < 200 and resp.status != 101:
            resp = await read_head(reader)
        if method == "HEAD" or resp.status in (204, 304):
            return resp
        te = resp.get("Transfer-Encoding")
        if te is not None:
            assert te.lower() == "chunked", te
            body = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers from the proxy
                    break
                body += await reader.readexactly(size)
                assert await reader.readexactly(2) == b"\r\n"
            resp.body = bytes(body)
        elif resp.get("Content-Length") is not None:
            resp.body = await reader.readexactly(int(resp.get("Content-Length") or 0))
        else:
            resp.body = await reader.read()
        return resp


async def wait_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Read until the peer closes (EOF or reset) and return what arrived before that.

    Raises TimeoutError when the connection is still open after ``within`` seconds.
    """
    data = bytearray()
    async with asyncio.timeout(within):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except (ConnectionError, ssl.SSLError):
            pass
    return bytes(data)


def close_writer(writer: asyncio.StreamWriter) -> None:
    """Drop a raw client connection without waiting for the TLS close handshake."""
    writer.transport.abort()
