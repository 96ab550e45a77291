"""Receipts in the data plane: which exchanges are signed, what is signed, where it is kept.

Owns (issue 6; the format is ``certmgr.receipt``, the key ``certmgr.signing``):
- :class:`ReceiptStore`: the bounded, TTL-limited store behind ``GET /v1/receipts/{id}``.
  Every entry lives exactly ``ttl`` seconds, so insertion order is expiry order and
  eviction pops from the front: O(1) amortized per insertion, no timer, no lock, nothing
  that can stall serving. Over ``max_entries`` the oldest entry goes first.
- :class:`BodyFields`: the model name and response id read from the response, with bounded
  parsing: a JSON body (when it is whole within ``max_parse_bytes``) or the first event of
  an SSE stream (OpenAI-compatible servers repeat ``id`` and ``model`` in every chunk).
- :class:`ReceiptIssuer`: one per worker. Decides whether an exchange is signed, signs
  (the hashes come from the forwarder, which fed every forwarded byte through
  ``IncrementalHash``), and publishes receipts of streamed responses to the store.
- The store's placement: with one worker it is in process; with several (SO_REUSEPORT
  spreads the fetch over any of them) it lives in the supervisor (:class:`StoreServer` on
  a unix socket in a private directory) and workers reach it through :class:`RemoteStore`.

Stored receipts are public data (hashes and a signature); the ids are 128-bit random, so
only the client that got the response header can name its receipt.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Final, Protocol

import aiohttp
from aiohttp import web

from certmgr.keys import Sealer
from certmgr.receipts.format import Receipt
from certmgr.receipts.signing import DigestSigner, sign_receipt
from proxy import metrics
from proxy.config import RECEIPTS_PATH, Config, ReceiptsConfig

__all__ = [
    "ID_HEADER",
    "INCOMPLETE",
    "RECEIPT_HEADER",
    "BodyFields",
    "LocalStore",
    "ReceiptIssuer",
    "ReceiptStore",
    "RemoteStore",
    "SharedStore",
    "StoreServer",
    "new_receipt_id",
    "worker_issuer",
]

log = logging.getLogger("teeproxy.receipts")

RECEIPT_HEADER: Final = "Teeproxy-Receipt"
ID_HEADER: Final = "Teeproxy-Receipt-Id"
# Stored instead of a receipt when a streamed response did not complete: nothing was signed.
INCOMPLETE: Final = b"incomplete"
_ID = re.compile(r"[A-Za-z0-9_-]{22}", re.ASCII)  # secrets.token_urlsafe(16)
_MAX_FIELD: Final = 256  # certmgr.receipt.MAX_TEXT_BYTES
_MAX_STORED: Final = 4096  # certmgr.receipt.MAX_JSON_BYTES


def new_receipt_id() -> str:
    """128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


# -- the store ----------------------------------------------------------------------------


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
    """The store in this process (one worker, or the supervisor's side of :class:`StoreServer`)."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store

    async def put(self, rid: str, blob: bytes) -> None:
        self.store.put(rid, blob)

    async def get(self, rid: str) -> bytes | None:
        return self.store.get(rid)

    async def close(self) -> None:
        return None


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
        app = web.Application(client_max_size=_MAX_STORED)
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
        if _ID.fullmatch(rid) is None:
            return web.Response(status=400)
        self.store.put(rid, await request.read())
        return web.Response(status=204)

    async def _get(self, request: web.Request) -> web.Response:
        rid = request.match_info["rid"]
        blob = self.store.get(rid) if _ID.fullmatch(rid) else None
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


class RemoteStore:
    """A worker's client of the supervisor's :class:`StoreServer`."""

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
            return await resp.content.read(_MAX_STORED + 1)

    async def close(self) -> None:
        await self._session.close()


# -- what is signed -----------------------------------------------------------------------


def _field(doc: object, key: str) -> str:
    """``doc[key]`` when ``doc`` is an object and the value a short string, else ``""``."""
    if not isinstance(doc, dict):
        return ""
    value = doc.get(key)
    if not isinstance(value, str):
        return ""
    try:
        if len(value.encode("utf-8")) > _MAX_FIELD:
            return ""
    except UnicodeEncodeError:  # a lone surrogate from a \\ud800 escape
        return ""
    return value


def _parse_json(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested too deep
        return None


class BodyFields:
    """``model`` and ``id`` of a response, from at most ``limit`` bytes of it.

    JSON body: the top-level ``model`` and ``id`` when the whole body fits in ``limit``.
    SSE (``text/event-stream``): those of the first event's ``data`` (WHATWG HTML "Server-sent
    events", 9.2.6 interpretation: ``data:`` lines joined by newlines), when that event
    ends within ``limit`` bytes. Anything else, or a value that is not a string of at
    most 256 UTF-8 bytes: ``""``.
    """

    __slots__ = (
        "_buf",
        "_carry",
        "_done",
        "_event",
        "_limit",
        "_size",
        "_sse",
        "model",
        "response_id",
    )

    def __init__(self, *, sse: bool, limit: int) -> None:
        self._sse = sse
        self._limit = limit
        self._buf = bytearray()  # SSE: line ends normalized to LF
        self._carry = b""  # SSE: a CR at a chunk's end (the LF of a CRLF may follow)
        self._event = 0  # SSE: where the current event starts in _buf
        self._size = 0
        self._done = limit == 0
        self.model = ""
        self.response_id = ""

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._stop()
            return
        if not self._sse:
            self._buf += chunk
            return
        data = self._carry + chunk
        self._carry = b""
        if data.endswith(b"\r"):
            self._carry, data = b"\r", data[:-1]
        # Line ends are CRLF, LF or CR (9.2.5); events end at a blank line.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        scan = max(self._event, len(self._buf) - 1)  # only the new bytes (and one before)
        self._buf += data
        while not self._done:
            end = self._buf.find(b"\n\n", scan)
            if end < 0:
                return
            self._dispatch(bytes(self._buf[self._event : end]))
            self._event = scan = end + 2

    def finish(self) -> None:
        """The body is complete: parse a whole JSON body (SSE needs nothing more)."""
        if not self._done and not self._sse:
            self._take(_parse_json(bytes(self._buf)))
        self._stop()

    def _stop(self) -> None:
        self._done = True
        self._buf = bytearray()

    def _take(self, doc: object) -> None:
        self.model = _field(doc, "model")
        self.response_id = _field(doc, "id")

    def _dispatch(self, event: bytes) -> None:
        data = [
            line[5:].removeprefix(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        ]
        if data:  # the first event with data (comments and retry-only events are skipped)
            self._take(_parse_json(b"\n".join(data)))
            self._stop()


class ReceiptIssuer:
    """Signs exchanges for one worker and keeps the receipts of streamed ones."""

    def __init__(
        self,
        cfg: ReceiptsConfig,
        key: DigestSigner,
        measurement_id: bytes,
        store: StoreBackend,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(measurement_id) != 32:
            raise ValueError("a measurement id is 32 bytes")
        self.cfg = cfg
        self.routes = frozenset(cfg.routes)
        self.key = key
        self.measurement_id = measurement_id
        self.store = store
        self._clock = clock
        self.pending: set[str] = set()

    def reconfigure(self, cfg: Config) -> None:
        """Routes and limits follow a reload; key, measurement and store stay."""
        self.cfg = cfg.receipts
        self.routes = frozenset(cfg.receipts.routes)

    def applies(self, method: str, path: str) -> bool:
        return method == "POST" and path in self.routes

    def buffers(self, content_type: str, content_length: int | None) -> bool:
        """Hold this response back to put its receipt in the headers?"""
        return (
            content_length is not None
            and content_length <= self.cfg.max_buffered_body
            and not is_event_stream(content_type)
        )

    def fields(self, content_type: str) -> BodyFields:
        return BodyFields(sse=is_event_stream(content_type), limit=self.cfg.max_parse_bytes)

    def sign(self, request_sha256: bytes, response_sha256: bytes, fields: BodyFields) -> Receipt:
        return sign_receipt(
            self.key,
            request_sha256=request_sha256,
            response_sha256=response_sha256,
            model=fields.model,
            response_id=fields.response_id,
            timestamp=int(self._clock()),
            measurement_id=self.measurement_id,
        )

    async def publish(self, rid: str, receipt: Receipt | None) -> None:
        """Store a streamed response's receipt (``None``: it did not complete)."""
        self.pending.discard(rid)
        (metrics.RECEIPT_STORED if receipt is not None else metrics.RECEIPT_INCOMPLETE).inc()
        try:
            await self.store.put(rid, receipt.to_json() if receipt is not None else INCOMPLETE)
        except (OSError, aiohttp.ClientError, TimeoutError) as e:
            log.error("receipt %s not stored: %s", rid, e)

    async def handle_get(self, request: web.BaseRequest) -> web.StreamResponse:
        """``GET /v1/receipts/{id}``."""
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "use GET", Allow="GET, HEAD")
        rid = request.path[len(RECEIPTS_PATH) :]
        if _ID.fullmatch(rid) is None:
            return _error(400, "invalid_receipt_id", "not a receipt id")
        try:
            blob = await self.store.get(rid)
        except (OSError, aiohttp.ClientError, TimeoutError) as e:
            log.error("receipt store unreachable: %s", e)
            return _error(503, "receipt_store_unavailable", "try again", **{"Retry-After": "1"})
        if blob is None:
            if rid in self.pending:
                return _error(
                    409,
                    "receipt_pending",
                    "the response has not completed yet",
                    **{"Retry-After": "1"},
                )
            return _error(404, "receipt_not_found", "unknown or expired receipt id")
        if blob == INCOMPLETE:
            return _error(
                410, "receipt_unavailable", "the response did not complete: nothing was signed"
            )
        return web.Response(
            body=blob,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


def is_event_stream(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def _error(status: int, kind: str, message: str, **headers: str) -> web.Response:
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}})
    return web.Response(
        status=status,
        text=body,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **headers},
    )


def _build_issuer(cfg: Config, sealer: Sealer, store: StoreBackend) -> ReceiptIssuer | None:
    from certmgr.attest.measurement import measurement_id  # noqa: PLC0415
    from certmgr.attest.providers.base import self_measurement  # noqa: PLC0415
    from certmgr.receipts.signing import load_signing_key  # noqa: PLC0415
    from proxy.wellknown import attestation_provider  # noqa: PLC0415

    provider = attestation_provider(cfg, sealer)
    if provider is None:
        # A receipt names the attested measurement and its key is bound in the attestation:
        # without a TEE there is nothing honest to sign with.
        log.warning("receipts are off: no attestation provider ([attestation] provider)")
        return None
    key = load_signing_key(cfg.state_dir, sealer)
    mid = measurement_id(self_measurement(provider))
    log.info(
        "receipts on for %s: signer %s, measurement 0x%s",
        ", ".join(cfg.receipts.routes),
        key.address_hex,
        mid.hex(),
    )
    return ReceiptIssuer(cfg.receipts, key, mid, store)


async def worker_issuer(cfg: Config, sealer: Sealer, shared_path: str) -> ReceiptIssuer | None:
    """A worker's issuer (blocking parts in a thread): the shared store when the supervisor
    runs one (``shared_path``), else a store in this process."""
    store: StoreBackend = (
        RemoteStore(shared_path)
        if shared_path
        else LocalStore(ReceiptStore(cfg.receipts.ttl, cfg.receipts.max_entries))
    )
    issuer = await asyncio.to_thread(_build_issuer, cfg, sealer, store)
    if issuer is None:
        await store.close()
    return issuer
