"""The supervisor's receipt store with several workers, served to them on a unix socket.

A fetch of ``GET /v1/receipts/{id}`` can land on any worker (SO_REUSEPORT), so with
several workers the store (:class:`proxy.dataplane.receipt_store.ReceiptStore`) lives here
and workers reach it with :class:`proxy.dataplane.receipt_store.RemoteStore`. The socket
sits in a fresh directory only this user can enter (mode 0700, removed on close); requests
are bounded (ids by pattern, bodies by the receipt size cap).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from aiohttp import web

from certmgr.errors import CertmgrError
from proxy.config import ReceiptsConfig
from proxy.dataplane.receipt_store import MAX_STORED, RECEIPT_ID, ReceiptStore
from proxy.log import receipts_log as log
from proxy.tmpdirs import private_tempdir, remove_private_tempdir

__all__ = ["Backing", "SharedStore", "StoreServer"]


class Backing(Protocol):
    """A store shared beyond this machine (cluster mode: sealed in etcd with a lease)."""

    async def put_receipt(self, rid: str, blob: bytes) -> None: ...

    async def get_receipt(self, rid: str) -> bytes | None: ...


class StoreServer:
    """The supervisor's store, served to workers on a unix socket (``PUT``/``GET /r/{id}``).

    The socket sits in a directory only this user can enter (mode 0700); the requests are
    bounded (ids by pattern, bodies by the receipt size cap).
    """

    def __init__(self, store: ReceiptStore, path: str, backing: Backing | None = None) -> None:
        self.store = store
        self.path = path
        self.backing = backing
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
        blob = await request.read()
        self.store.put(rid, blob)
        if self.backing is not None:
            # Awaited: once the worker's PUT returns, any replica can answer for this id.
            try:
                await self.backing.put_receipt(rid, blob)
            except (CertmgrError, OSError) as e:
                log.error("receipt %s not shared with the cluster: %s", rid[:8], e)
        return web.Response(status=204)

    async def _get(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        if RECEIPT_ID.fullmatch(rid) is None:
            return web.Response(status=404)
        blob = self.store.get(rid)
        if blob is None and self.backing is not None:
            try:
                blob = await self.backing.get_receipt(rid)
            except (CertmgrError, OSError) as e:
                log.warning("receipt %s: the cluster store failed: %s", rid[:8], e)
            if blob is not None and len(blob) > MAX_STORED:
                blob = None
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
    async def start(cls, cfg: ReceiptsConfig, backing: Backing | None = None) -> SharedStore:
        # Removed at close(); a killed supervisor's is removed by the next one's start.
        directory = str(await asyncio.to_thread(private_tempdir, "teeproxy-receipts-"))
        server = StoreServer(
            ReceiptStore(cfg.ttl, cfg.max_entries), directory + "/store.sock", backing
        )
        await server.start()
        return cls(server, directory)

    async def close(self) -> None:
        await self.server.close()
        await asyncio.to_thread(remove_private_tempdir, Path(self.directory))
