"""The supervisor's receipt store with several workers, served to them on a unix socket.

A fetch of ``GET /v1/receipts/{id}`` can land on any worker (SO_REUSEPORT), so with
several workers the store (:class:`proxy.dataplane.receipt_store.ReceiptStore`) lives here
and workers reach it with :class:`proxy.dataplane.receipt_store.RemoteStore`. The socket
sits in a fresh directory only this user can enter (mode 0700, removed on close); requests
are bounded (ids by pattern, bodies by the receipt size cap).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile

from aiohttp import web

from proxy.config import ReceiptsConfig
from proxy.dataplane.receipt_store import MAX_STORED, RECEIPT_ID, ReceiptStore

__all__ = ["SharedStore", "StoreServer"]


class StoreServer:
    """The supervisor's store, served to workers on a unix socket (``PUT``/``GET /r/{id}``).

    The socket sits in a directory only this user can enter (mode 0700); the requests are
    bounded (ids by pattern, bodies by the receipt size cap).
    """

    def __init__(self, store: ReceiptStore, path: str) -> None:
        self.store = store
        self.path = path
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_STORED)
        app.router.add_route("PUT", "/r/{rid}", self._put)
        app.router.add_route("GET", "/r/{rid}", self._get)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.UnixSite(self._runner, self.path).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _put(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if RECEIPT_ID.fullmatch(rid) is None:
            return web.Response(status=400)
        self.store.put(rid, await request.read())
        return web.Response(status=204)

    async def _get(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        blob = self.store.get(rid) if RECEIPT_ID.fullmatch(rid) else None
        if blob is None:
            return web.Response(status=404)
        return web.Response(body=blob)


class SharedStore:
    """The supervisor's store with several workers: a :class:`StoreServer` on a unix socket
    in a fresh private directory (mode 0700, removed on close)."""

    def __init__(self, server: StoreServer, directory: str) -> None:
        self.server = server
        self.directory = directory

    @property
    def path(self) -> str:
        return self.server.path

    @classmethod
    async def start(cls, cfg: ReceiptsConfig) -> SharedStore:
        directory = await asyncio.to_thread(tempfile.mkdtemp, prefix="teeproxy-receipts-")
        server = StoreServer(ReceiptStore(cfg.ttl, cfg.max_entries), directory + "/store.sock")
        await server.start()
        return cls(server, directory)

    async def close(self) -> None:
        await self.server.close()
        await asyncio.to_thread(shutil.rmtree, self.directory, True)
