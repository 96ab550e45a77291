"""Streaming: SSE events reach the client when the backend writes them, not batched."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from aiohttp.web_protocol import RequestHandler

from proxy.dataplane.tlsserver import TLSTransport
from tests.helpers.proxies import ProxyFactory


async def _sse_backend(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(6):
        await resp.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(0.2)
    await resp.write_eof()
    return resp


async def test_sse_events_arrive_spaced_as_sent(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    app = web.Application()
    app.router.add_get("/sse", _sse_backend)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    arrivals: list[float] = []
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/sse", ssl=client_ssl) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        buf = b""
        async for chunk in resp.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                _, buf = buf.split(b"\n\n", 1)
                arrivals.append(time.monotonic())
    assert len(arrivals) == 6
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Sent 200 ms apart: each must arrive on its own, not coalesced with the next one.
    assert all(g > 0.1 for g in gaps), gaps
    assert arrivals[-1] - arrivals[0] > 0.8


async def test_small_body_goes_out_with_the_headers_in_one_write(
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    client_ssl: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A body the backend sent whole is written with the header block: one TLS record."""

    async def small(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/small", small)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")

    # Every write the proxy makes to a TLS client, whoever makes it (aiohttp's writer or
    # the relay): the TLS transport's write, on the server side.
    proxy_writes: list[bytes] = []
    real_write = TLSTransport.write

    def counting_write(self: TLSTransport, data: Any) -> None:
        if isinstance(self.get_protocol(), RequestHandler):
            proxy_writes.append(bytes(data))
        real_write(self, data)

    monkeypatch.setattr(TLSTransport, "write", counting_write)
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/small", ssl=client_ssl) as resp,
    ):
        assert await resp.text() == "hello"
    assert len(proxy_writes) == 1, proxy_writes
    assert proxy_writes[0].startswith(b"HTTP/1.1 200") and proxy_writes[0].endswith(b"hello")


async def test_stream_headers_reach_the_client_before_the_first_event(
    aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    """Coalescing must not hold a stream's headers back until its first event."""
    release = asyncio.Event()

    async def slow_first_event(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await release.wait()
        await resp.write(b"data: first\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/sse", slow_first_event)
    backend = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}")
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(5):
            resp = await s.get(f"{proxy.url}/sse", ssl=client_ssl)
        assert resp.status == 200
        release.set()
        assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
        resp.close()
