"""Receipts in the data plane: one tap that owns which exchanges are signed and how.

The forwarder knows nothing of receipts: :class:`ReceiptIssuer` is a
:class:`proxy.dataplane.hooks.TapFactory`, and each signed exchange gets a
:class:`ReceiptTap` that sees the bytes as they are relayed (the format is
:mod:`certmgr.receipts.format`, the key :mod:`certmgr.receipts.signing`,
docs/RECEIPTS.md the behaviour):

- signed: ``POST`` to a ``[receipts] routes`` path answered 2xx. Every request chunk
  forwarded and every response chunk returned goes through SHA-256 as it passes; model and
  response id are read with bounded parsing (:mod:`proxy.dataplane.body_fields`);
- a response that declares a ``Content-Length`` up to ``max_buffered_body`` (and is not
  SSE) is held, signed and sent with ``Teeproxy-Receipt`` in the headers; any other starts
  at once with ``Teeproxy-Receipt-Id`` and its receipt is stored before the last byte goes
  out (so a client that saw the end can fetch it at once), at
  ``GET /v1/receipts/{id}`` (:meth:`ReceiptIssuer.handle_get`);
- only the proxy speaks for its receipts: backend-supplied ``Teeproxy-Receipt*`` headers
  are removed from every response.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from certmgr.receipts.format import IncrementalHash, Receipt
from certmgr.receipts.signing import DigestSigner, sign_receipt
from proxy import metrics
from proxy.config import RECEIPTS_PATH, Config, ReceiptsConfig
from proxy.dataplane.body_fields import BodyFields, is_event_stream
from proxy.dataplane.endpoints import LocalEndpoints
from proxy.dataplane.hooks import STREAM
from proxy.dataplane.receipt_store import (
    INCOMPLETE,
    RECEIPT_ID,
    LocalStore,
    ReceiptStore,
    RemoteStore,
    StoreBackend,
)
from proxy.dataplane.responses import json_error
from proxy.log import receipts_log as log
from proxy.runtime import Runtime
from proxy.tasks import spawn

__all__ = [
    "ID_HEADER",
    "RECEIPT_HEADER",
    "ReceiptIssuer",
    "ReceiptTap",
    "new_receipt_id",
    "worker_issuer",
]

RECEIPT_HEADER: Final = "Teeproxy-Receipt"
ID_HEADER: Final = "Teeproxy-Receipt-Id"


def new_receipt_id() -> str:
    """128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


class _StripOnly:
    """The tap of an exchange that is not signed: it only removes backend receipt headers."""

    __slots__ = ()

    def request_body(self, chunk: bytes) -> None:
        return None

    def response_headers(
        self, status: int, headers: CIMultiDict[str], content_length: int | None
    ) -> int | None:
        headers.popall(RECEIPT_HEADER, None)
        headers.popall(ID_HEADER, None)
        return STREAM

    def response_body(self, chunk: bytes) -> None:
        return None

    async def response_end(self) -> None:
        return None

    def error(self) -> None:
        return None


_STRIP_ONLY: Final = _StripOnly()


class ReceiptTap:
    """One signed exchange: hashes both bodies as they pass, signs at the end."""

    __slots__ = ("fields", "headers", "held", "issuer", "request_hash", "response_hash", "rid")

    def __init__(self, issuer: ReceiptIssuer) -> None:
        self.issuer = issuer
        self.request_hash = IncrementalHash()
        self.response_hash = IncrementalHash()
        self.fields: BodyFields | None = None  # None: this response is not signed
        self.headers: CIMultiDict[str] | None = None
        self.held = False
        self.rid = ""

    def request_body(self, chunk: bytes) -> None:
        self.request_hash.update(chunk)

    def response_headers(
        self, status: int, headers: CIMultiDict[str], content_length: int | None
    ) -> int | None:
        _STRIP_ONLY.response_headers(status, headers, content_length)
        if not 200 <= status < 300:
            return STREAM
        issuer = self.issuer
        ctype = headers.get("Content-Type", "")
        self.fields = issuer.fields(ctype)
        self.headers = headers
        if issuer.buffers(ctype, content_length):
            self.held = True
            return issuer.cfg.max_buffered_body
        self.rid = new_receipt_id()
        headers[ID_HEADER] = self.rid
        issuer.pending.add(self.rid)
        return STREAM

    def response_body(self, chunk: bytes) -> None:
        if self.fields is not None:
            self.response_hash.update(chunk)
            self.fields.feed(chunk)

    async def response_end(self) -> None:
        fields = self.fields
        if fields is None:
            return
        fields.finish()
        # The request digest is taken now, not when the response started: a backend may
        # answer before the upload ended, and the receipt covers every byte forwarded.
        receipt = self.issuer.sign(self.request_hash.digest(), self.response_hash.digest(), fields)
        if self.held and self.headers is not None:
            self.headers[RECEIPT_HEADER] = receipt.to_header()
            metrics.RECEIPT_HEADER.inc()
        else:
            await self.issuer.publish(self.rid, receipt)

    def error(self) -> None:
        if self.rid and self.rid in self.issuer.pending:  # it did not complete
            spawn(self.issuer.publish(self.rid, None), "receipt-incomplete")


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

    def register(self, endpoints: LocalEndpoints) -> None:
        endpoints.add(RECEIPTS_PATH, self.handle_get, prefix=True)

    def tap(self, method: str, path: str) -> ReceiptTap | _StripOnly:
        if method == "POST" and path in self.routes:
            return ReceiptTap(self)
        return _STRIP_ONLY

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
            return json_error(405, "method_not_allowed", "use GET", headers={"Allow": "GET, HEAD"})
        rid = request.path[len(RECEIPTS_PATH) :]
        if RECEIPT_ID.fullmatch(rid) is None:
            return json_error(400, "invalid_receipt_id", "not a receipt id")
        try:
            blob = await self.store.get(rid)
        except (OSError, aiohttp.ClientError, TimeoutError) as e:
            log.error("receipt store unreachable: %s", e)
            return json_error(
                503, "receipt_store_unavailable", "try again", headers={"Retry-After": "1"}
            )
        if blob is None:
            if rid in self.pending:
                return json_error(
                    409,
                    "receipt_pending",
                    "the response has not completed yet",
                    headers={"Retry-After": "1"},
                )
            return json_error(404, "receipt_not_found", "unknown or expired receipt id")
        if blob == INCOMPLETE:
            return json_error(
                410, "receipt_unavailable", "the response did not complete: nothing was signed"
            )
        return web.Response(
            body=blob,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


async def worker_issuer(cfg: Config, runtime: Runtime, shared_path: str) -> ReceiptIssuer | None:
    """A worker's issuer: the shared store when the supervisor runs one (``shared_path``),
    else a store in this process. None when receipts are off or cannot be honest: a receipt
    names the attested measurement and its key is bound in the attestation, so without a
    TEE (or a key) there is nothing to sign with."""
    if not cfg.receipts.enabled:
        return None
    key, mid = runtime.signing_key, runtime.measurement_id
    if key is None or mid is None:
        log.warning("receipts are off: no attestation provider or signing key in this worker")
        return None
    store: StoreBackend = (
        RemoteStore(shared_path)
        if shared_path
        else LocalStore(ReceiptStore(cfg.receipts.ttl, cfg.receipts.max_entries))
    )
    log.info(
        "receipts on for %s: signer %s, measurement 0x%s",
        ", ".join(cfg.receipts.routes),
        key.address_hex,
        mid.hex(),
    )
    return ReceiptIssuer(cfg.receipts, key, mid, store)
