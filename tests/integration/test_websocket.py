"""WebSocket relaying: messages both ways, close codes, subprotocols, size limit, refusal."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.pytest_plugin import AiohttpServer

from tests.helpers.proxies import ProxyFactory

FLOOD_MESSAGES = 300  # 19 MiB: far beyond what socket buffers on both hops can hold


@dataclass
class WsBackend:
    url: str = ""
    offered: list[str] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def ws_backend(aiohttp_server: AiohttpServer) -> WsBackend:
    """Echoes messages; "close <code>" closes with that code; "send <n>" sends n bytes."""
    state = WsBackend()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/refuse":
            return web.Response(status=403, text="no upgrade for you")
        state.offered.extend(request.headers.getall("Sec-WebSocket-Protocol", []))
        ws = web.WebSocketResponse(protocols=("b",), max_msg_size=0)
        await ws.prepare(request)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    if msg.data.startswith("close "):
                        await ws.close(code=int(msg.data.split()[1]), message=b"backend bye")
                    elif msg.data == "die":
                        assert request.transport is not None
                        request.transport.abort()  # vanish without a closing handshake
                    elif msg.data == "flood":
                        for _ in range(FLOOD_MESSAGES):
                            await ws.send_bytes(b"f" * 65536)
                    elif msg.data.startswith("send "):
                        await ws.send_bytes(b"z" * int(msg.data.split()[1]))
                    else:
                        await ws.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            state.close_codes.append(ws.close_code)
            state.closed.set()
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    state.url = f"http://127.0.0.1:{server.port}"
    return state


def _wss(port: int, path: str = "/ws") -> str:
    return f"wss://localhost:{port}{path}"


async def test_echo_text_binary_large_and_subprotocol(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url)
    big = random.Random(3).randbytes(3 * 1024 * 1024)
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(_wss(proxy.port), ssl=client_ssl, protocols=("a", "b"), max_msg_size=0) as ws,
    ):
        assert ws.protocol == "b"
        await ws.send_str("héllo")
        assert await ws.receive_str(timeout=5) == "héllo"
        await ws.send_bytes(b"\x00\x01\xff")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01\xff"
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=10) == big
    assert [p.strip() for v in ws_backend.offered for p in v.split(",")] == ["a", "b"]


async def test_client_close_code_reaches_backend(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url)
    async with aiohttp.ClientSession() as s:
        ws = await s.ws_connect(_wss(proxy.port), ssl=client_ssl)
        await ws.send_str("ping")
        assert await ws.receive_str(timeout=5) == "ping"
        await ws.close(code=4000, message=b"client bye")
    async with asyncio.timeout(5):
        await ws_backend.closed.wait()
    assert ws_backend.close_codes == [4000]


async def test_backend_close_code_reaches_client(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url)
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(_wss(proxy.port), ssl=client_ssl) as ws,
    ):
        await ws.send_str("close 4001")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4001
        assert ws.close_code == 4001


async def test_backend_vanishing_gives_client_a_valid_close_code(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url)
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(_wss(proxy.port), ssl=client_ssl) as ws,
    ):
        await ws.send_str("die")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE, msg
        # 1006 ("abnormal closure") is reserved for local use and never sent in a frame.
        assert msg.data == WSCloseCode.INTERNAL_ERROR


async def test_max_message_size_client_to_backend(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url, "[limits]\nwebsocket_max_message = 1024")
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(_wss(proxy.port), ssl=client_ssl) as ws,
    ):
        await ws.send_bytes(b"y" * 1024)  # at the limit: relayed
        assert await ws.receive_bytes(timeout=5) == b"y" * 1024
        await ws.send_bytes(b"y" * 1025)
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE, msg
        assert msg.data == WSCloseCode.MESSAGE_TOO_BIG
    async with asyncio.timeout(5):
        await ws_backend.closed.wait()
    assert ws_backend.close_codes == [WSCloseCode.MESSAGE_TOO_BIG]


async def test_max_message_size_backend_to_client(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url, "[limits]\nwebsocket_max_message = 1024")
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(_wss(proxy.port), ssl=client_ssl, max_msg_size=0) as ws,
    ):
        await ws.send_str("send 1024")
        assert await ws.receive_bytes(timeout=5) == b"z" * 1024
        await ws.send_str("send 5000")
        msg = await ws.receive(timeout=5)
        # The oversized message is not relayed; the client is told why.
        assert msg.type is WSMsgType.CLOSE, msg
        assert msg.data == WSCloseCode.MESSAGE_TOO_BIG
    async with asyncio.timeout(5):
        await ws_backend.closed.wait()


async def test_backend_refusing_the_upgrade_gives_502(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url)
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await s.ws_connect(_wss(proxy.port, "/refuse"), ssl=client_ssl)
        assert info.value.status == 502
        # The same path over plain HTTP shows the JSON error shape.
        async with s.get(
            f"{proxy.url}/refuse",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
            ssl=client_ssl,
        ) as resp:
            assert resp.status == 502
            body = json.loads(await resp.read())
            assert body["error"]["type"] == "backend_unavailable"
    assert ws_backend.offered == []  # the refusal came before any WebSocket was opened


async def test_client_that_stops_reading_is_cut_off_by_send_timeout(
    ws_backend: WsBackend, proxy_factory: ProxyFactory, client_ssl: ssl.SSLContext
) -> None:
    proxy = await proxy_factory(ws_backend.url, "[limits]\nsend_timeout = 0.5")
    received = 0
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(_wss(proxy.port), ssl=client_ssl, max_msg_size=0) as ws,
    ):
        await ws.send_str("flood")
        # Do not read: the client's buffers fill, then the proxy's writes block.
        async with asyncio.timeout(10):
            await ws_backend.closed.wait()
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type is not WSMsgType.BINARY:
                break
            received += 1
    # The proxy gave up on the stalled client and told the backend why (1008).
    assert ws_backend.close_codes == [WSCloseCode.POLICY_VIOLATION]
    assert received < FLOOD_MESSAGES
