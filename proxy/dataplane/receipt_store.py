"""Where receipts of streamed responses wait to be fetched: a bounded TTL store.

- :class:`ReceiptStore`: receipts by id for ``ttl`` seconds, at most ``max_entries``.
  Every entry lives exactly ``ttl`` seconds, so insertion order is expiry order and
  eviction pops from the front: O(1) amortized per insertion, no timer, no lock, nothing
  that can stall serving. Over ``max_entries`` the oldest entry goes first.
- Its placement: with one worker it is in process (:class:`LocalStore`); with several
  (SO_REUSEPORT spreads the fetch over any of them) it lives in the supervisor
  (:mod:`proxy.control.receipt_store`, a small HTTP server on a unix socket in a private
  directory) and workers reach it through :class:`RemoteStore`. The wire protocol is
  ``PUT`` / ``GET /r/{id}``, ids matching :data:`RECEIPT_ID`, bodies at most
  :data:`MAX_STORED` bytes.

Stored receipts are public data (hashes and a signature); the ids are 128-bit random, so
only the client that got the response header can name its receipt.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable
from typing import Final, Protocol

import aiohttp

from certmgr.receipts.format import MAX_JSON_BYTES

__all__ = [
    "INCOMPLETE",
    "MAX_STORED",
    "RECEIPT_ID",
    "LocalStore",
    "ReceiptStore",
    "RemoteStore",
    "StoreBackend",
]

# Stored instead of a receipt when a streamed response did not complete: nothing was signed.
INCOMPLETE: Final = b"incomplete"
RECEIPT_ID: Final = re.compile(r"[A-Za-z0-9_-]{22}", re.ASCII)  # secrets.token_urlsafe(16)
MAX_STORED: Final = MAX_JSON_BYTES


class ReceiptStore:
    """Receipts by id for ``ttl`` seconds, at most ``max_entries`` (oldest evicted first)."""

    __slots__ = ("_clock", "_entries", "max_entries", "ttl")

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[float, bytes]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self, now: float) -> None:
        entries = self._entries
        while entries:
            _, (expires, _) = next(iter(entries.items()))
            if expires > now:
                break
            entries.popitem(last=False)

    def put(self, rid: str, blob: bytes) -> None:
        now = self._clock()
        self._evict(now)
        entries = self._entries
        entries.pop(rid, None)  # a re-put restarts the entry's life at the back
        while len(entries) >= self.max_entries:
            entries.popitem(last=False)
        entries[rid] = (now + self.ttl, blob)

    def get(self, rid: str) -> bytes | None:
        entry = self._entries.get(rid)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]


class StoreBackend(Protocol):
    async def put(self, rid: str, blob: bytes) -> None: ...

    async def get(self, rid: str) -> bytes | None: ...

    async def close(self) -> None: ...


class LocalStore:
    """The store in this process (one worker, or behind the supervisor's store server)."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store

    async def put(self, rid: str, blob: bytes) -> None:
        self.store.put(rid, blob)

    async def get(self, rid: str) -> bytes | None:
        return self.store.get(rid)

    async def close(self) -> None:
        return None


class RemoteStore:
    """A worker's client of the supervisor's store server (:mod:`proxy.control.receipt_store`)."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=path, limit=64),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def put(self, rid: str, blob: bytes) -> None:
        async with self._session.put(f"http://store/r/{rid}", data=blob) as resp:
            if resp.status != 204:
                raise OSError(f"receipt store refused the receipt (HTTP {resp.status})")

    async def get(self, rid: str) -> bytes | None:
        async with self._session.get(f"http://store/r/{rid}") as resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                raise OSError(f"receipt store answered HTTP {resp.status}")
            return await resp.content.read(MAX_STORED + 1)

    async def close(self) -> None:
        await self._session.close()
