"""proxy.dataplane.upstream: an idle pooled backend connection closes after
``backend.pool_idle_timeout``, and only while idle (one timer per connection, moved)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from proxy.config import BackendConfig, LimitsConfig
from proxy.dataplane.upstream import BackendConnection, BackendPool


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the proxy closes its end
    writer.close()


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    """A TCP server on loopback that holds each connection until the proxy closes it."""
    server = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.close()
    await server.wait_closed()


async def _connection(url: str) -> BackendConnection:
    pool = BackendPool(BackendConfig(url=url), LimitsConfig())
    conn, reused = await pool.acquire()
    assert not reused
    return conn


async def _wait_lost(conn: BackendConnection, within: float) -> float:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while not conn.lost:
        assert loop.time() < end, "the idle connection was not closed"
        await asyncio.sleep(0.01)
    return loop.time()


async def test_an_idle_connection_closes_after_the_timeout(
    backend: str,
) -> None:
    conn = await _connection(backend)
    loop = asyncio.get_running_loop()
    idle_since = loop.time()
    conn.idle(0.15)
    lost = await _wait_lost(conn, 3.0)
    assert lost - idle_since >= 0.15


async def test_a_connection_in_use_is_not_closed_by_an_earlier_idle_period(
    backend: str,
) -> None:
    conn = await _connection(backend)
    # Idle for a moment, then in use for longer than the timeout: the timer set for the
    # idle period fires meanwhile and must not close it.
    conn.idle(0.1)
    await asyncio.sleep(0.02)
    assert conn.take()
    await asyncio.sleep(0.3)
    assert not conn.lost
    # Many short idle periods spanning several timeouts: each one moves the deadline.
    loop = asyncio.get_running_loop()
    end = loop.time() + 0.5
    while loop.time() < end:
        conn.idle(0.15)
        await asyncio.sleep(0.03)
        assert conn.take()
    assert not conn.lost
    conn.idle(0.1)  # and the last idle period still ends it
    await _wait_lost(conn, 3.0)


async def test_a_shorter_timeout_replaces_a_longer_timer(backend: str) -> None:
    conn = await _connection(backend)
    conn.idle(30.0)
    assert conn.take()
    conn.idle(0.1)  # pool_idle_timeout lowered by a reload
    await _wait_lost(conn, 3.0)
