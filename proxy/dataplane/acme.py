"""ACME in the workers: answering challenges, serving the ACME certificate, its evidence.

- :class:`Http01Responder`: the key authorization at ``/.well-known/acme-challenge/TOKEN``
  on the plain-HTTP listener (RFC 8555 8.3), read from what the supervisor published.
- :func:`acme_store_parts`: the stored ACME certificate (when usable) and any pending
  TLS-ALPN-01 challenge certificate (RFC 8737), for the CertStore a worker builds.
- :class:`AcmeEvidenceEndpoint`: ``GET /.well-known/tee/acme``, the account and the SPKI
  hash of every certificate key the TEE generated (public data only).

The order itself runs in the supervisor (:mod:`proxy.control.acme`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
from collections.abc import Callable
from typing import Final

from aiohttp import web

from certmgr.acme.challenges import http01, tlsalpn01
from certmgr.acme.challenges.tlsalpn01 import ALPN_ACME_TLS
from certmgr.acme.storage import AcmeStore
from certmgr.errors import CertError
from certmgr.keys import InsecureDevSealer, Sealer
from certmgr.store import CertEntry, entry_from_key
from proxy.config import Config
from proxy.dataplane.endpoints import LocalEndpoints
from proxy.log import acme_log as log

__all__ = [
    "ACME_EVIDENCE_PATH",
    "HTTP01_PREFIX",
    "AcmeEvidenceEndpoint",
    "Http01Responder",
    "acme_store_parts",
    "http01_response",
    "read_evidence",
]

HTTP01_PREFIX: Final = http01.PATH_PREFIX
ACME_EVIDENCE_PATH: Final = "/.well-known/tee/acme"


async def http01_response(state_dir: str, path: str) -> web.Response:
    """The key authorization for ``/.well-known/acme-challenge/TOKEN``, or 404."""
    token = path[len(HTTP01_PREFIX) :]
    data = await asyncio.to_thread(http01.lookup, state_dir, token)
    if data is None:
        return web.Response(status=404, text="no such challenge\n")
    return web.Response(body=data, content_type="application/octet-stream")


def acme_store_parts(
    cfg: Config,
    sealer: Sealer,
    factory: Callable[[], ssl.SSLContext],
    now: dt.datetime | None = None,
) -> tuple[list[CertEntry], dict[str, ssl.SSLContext]]:
    """Worker step (blocking): the stored ACME certificate, if usable, and challenge contexts.

    An expired, mismatched or name-missing certificate is not returned, so never served.
    """
    if not cfg.acme.enabled:
        return [], {}
    now = now or dt.datetime.now(dt.UTC)
    entries: list[CertEntry] = []
    stored = AcmeStore(cfg.state_dir, sealer).load_usable(cfg.acme.names, now)
    if stored is not None:
        entries.append(entry_from_key(stored.chain_pem, stored.key, factory, source="acme"))
    challenges: dict[str, ssl.SSLContext] = {}
    for ch in tlsalpn01.load_published(cfg.state_dir, sealer):
        try:
            entry = entry_from_key(ch.cert_pem, ch.key, _alpn_factory(factory), source="acme-tls/1")
        except CertError as e:
            log.warning("tls-alpn-01 challenge certificate for %s not usable: %s", ch.name, e)
            continue
        challenges[ch.name] = entry.context
    return entries, challenges


def _alpn_factory(factory: Callable[[], ssl.SSLContext]) -> Callable[[], ssl.SSLContext]:
    def make() -> ssl.SSLContext:
        ctx = factory()
        ctx.set_alpn_protocols([ALPN_ACME_TLS])  # RFC 8737 3: the only protocol offered
        return ctx

    return make


def read_evidence(state_dir: str) -> bytes:
    """The evidence document (blocking): account URI and every certificate key's SPKI hash."""
    ev = AcmeStore(state_dir, InsecureDevSealer()).evidence()  # reads public JSON only
    raw = ev.get("keys")
    keys = [k for k in raw if isinstance(k, str)] if isinstance(raw, list) else []
    doc = {
        "account_uri": ev.get("account_uri"),
        "certificate_keys": [{"spki_sha256": k} for k in keys],
        "format": "teeproxy-acme-evidence/1",
    }
    return json.dumps(doc, sort_keys=True).encode()


class AcmeEvidenceEndpoint:
    """``GET /.well-known/tee/acme`` (JSON): for comparing Certificate Transparency logs.

    Registered for GET and HEAD only (other methods are forwarded); 404 unless ACME and
    ``acme.evidence_endpoint`` are on.
    """

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def register(self, endpoints: LocalEndpoints) -> None:
        endpoints.add(ACME_EVIDENCE_PATH, self.handle, methods=("GET", "HEAD"))

    async def handle(self, _request: web.BaseRequest) -> web.StreamResponse:
        if not (self.cfg.acme.enabled and self.cfg.acme.evidence_endpoint):
            return web.Response(status=404, text="ACME is not configured\n")
        body = await asyncio.to_thread(read_evidence, self.cfg.state_dir)
        return web.Response(body=body, content_type="application/json")


class Http01Responder:
    """ACME HTTP-01 answers (RFC 8555 8.3) on the plain-HTTP listener."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def register(self, endpoints: LocalEndpoints) -> None:
        endpoints.add(HTTP01_PREFIX, self.handle, prefix=True)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        return await http01_response(self.state_dir, request.path)
