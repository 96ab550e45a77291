"""Streaming: SSE events reach the client when the backend writes them, not batched."""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time

import aiohttp
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.conftest import ProxyFactory


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
