"""WebSocket relay: messages copied both ways between the client and the backend.

Each hop answers its own control frames (ping/pong); a close on one side is passed to the
other with the same code where the code may appear on the wire (RFC 6455 7.4.1), and a
peer that stops reading is closed after ``limits.send_timeout`` (1008) instead of pinning
the relay. The upgrade itself is made by the forwarder (:mod:`proxy.dataplane.forward`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import aiohttp
from aiohttp import WSCloseCode, WSMsgType, web

from proxy import metrics
from proxy.log import forward_log as log

__all__ = ["is_websocket_upgrade", "relay_websocket", "wire_close_code"]


def is_websocket_upgrade(request: web.BaseRequest) -> bool:
    """A GET asking to switch to WebSocket (RFC 6455 4.1: Upgrade and Connection tokens)."""
    if request.method != "GET":
        return False
    upgrade = request.headers.get("Upgrade", "").lower()
    conn = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return upgrade == "websocket" and "upgrade" in conn


@dataclass(slots=True)
class _WsClose:
    """Why the relay is closing, shared by both directions so each hop gets the same code."""

    code: int | None = None


async def _ws_pipe(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    send_timeout: float,
    reason: _WsClose,
) -> None:
    async for msg in src:  # ends on CLOSE/CLOSING/CLOSED; close_code then holds the peer's
        if msg.type is WSMsgType.ERROR:
            log.info("WebSocket relay error: %s", msg.data)
            # The reason (1009 too big, 1007 bad UTF-8, ...): src.close_code may since have
            # become 1006, its own failed closing handshake with the misbehaving peer.
            reason.code = reason.code or getattr(msg.data, "code", None) or 1011
            break
        try:
            # A peer that stops reading must not pin the relay (limits.send_timeout).
            async with asyncio.timeout(send_timeout):
                if msg.type is WSMsgType.TEXT:
                    await dst.send_str(msg.data)
                elif msg.type is WSMsgType.BINARY:
                    await dst.send_bytes(msg.data)
        except TimeoutError:
            metrics.CONNECTIONS_REJECTED.labels("send_timeout").inc()
            log.info("WebSocket peer stopped reading for %.0f s: closing", send_timeout)
            reason.code = reason.code or WSCloseCode.POLICY_VIOLATION
            # Tell the healthy side first: the stalled one may never take a close frame.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(send_timeout):
                    await src.close(code=reason.code)
            break
    reason.code = reason.code or src.close_code
    if not dst.closed:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(send_timeout):
                await dst.close(code=wire_close_code(reason.code))


def wire_close_code(code: int | None) -> int:
    """A close code that may be sent in a Close frame (RFC 6455 7.4.1)."""
    if code is None or code in (WSCloseCode.OK, 1005):  # 1005: "no status received"
        return WSCloseCode.OK
    if code in (1004, 1006, 1015) or not 1000 <= code < 5000:  # reserved, never on the wire
        return WSCloseCode.INTERNAL_ERROR
    return code


async def relay_websocket(
    client: web.WebSocketResponse,
    upstream: aiohttp.ClientWebSocketResponse,
    send_timeout: float,
) -> None:
    loop = asyncio.get_running_loop()
    reason = _WsClose()
    up = loop.create_task(
        _ws_pipe(client, upstream, send_timeout, reason), name="ws-client-to-backend"
    )
    down = loop.create_task(
        _ws_pipe(upstream, client, send_timeout, reason), name="ws-backend-to-client"
    )
    try:
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        # One side finished: give the other a moment to forward the close, then stop it.
        if pending:
            await asyncio.wait(pending, timeout=5)
    finally:
        for t in (up, down):
            t.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
    if not client.closed:
        await client.close()
