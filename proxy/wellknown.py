"""Attestation in the proxy: the RA-TLS certificate's life cycle and the evidence endpoint.

- Supervisor (:func:`prepare_attestation`, called from ``proxy.certs.prepare_certificates``
  in a thread): builds the configured provider and makes sure a fresh RA-TLS certificate is
  in ``STATE/attestation`` (renewed at two thirds of ``attestation.cert_lifetime``).
- Worker (:func:`attestation_entry`, called from ``proxy.certs.build_store``): loads it into
  the CertStore under ``attestation.server_name``, so a client asking for that name by SNI
  gets it on the normal TLS port. The handshake never waits for a quote.
- Worker (:class:`AttestationEndpoint`): ``GET /.well-known/tee/attestation?nonce=HEX``
  answers a fresh quote whose report_data binds the nonce and the SPKI hash of the
  certificate used on *this* connection (ACME, RA-TLS or any other), plus the ACME account
  and keys when ACME is on, and the receipt signing address when receipts are on.
  Quotes are serialized and rate-limited per worker (:class:`certmgr.tee.QuoteGate`); over
  the limit the answer is 429. JSON shape: :mod:`certmgr.evidence` and docs/ATTESTATION.md.
- Receipt signing key (:mod:`certmgr.signing`, issue 6): with ``receipts.enabled`` and a
  provider, the supervisor makes sure the sealed key exists before the certificate is
  prepared, and its address goes into the RA-TLS claims as ``"signing-address"`` (a new
  address reissues the certificate); workers read the address from the unsealed key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from certmgr.attest.evidence import build_evidence, encode_evidence_claims, parse_nonce
from certmgr.attest.providers.base import QuoteProvider
from certmgr.attest.providers.factory import ProviderSettings, make_provider
from certmgr.attest.providers.gate import QuoteGate
from certmgr.attest.quote import parse_evidence
from certmgr.attest.ratls import report_data_for_claims
from certmgr.attest.ratls_store import (
    RaTlsMaterial,
    load_ratls,
    prepare_ratls,
    ratls_dir,
    ratls_renewal_due,
)
from certmgr.errors import (
    CertError,
    EvidenceError,
    QuoteError,
    QuoteProviderError,
    QuoteRateLimited,
    SigningKeyError,
)
from certmgr.keys import Sealer
from certmgr.receipts.signing import load_signing_key, prepare_signing_key
from certmgr.store import CertEntry, StoreHolder, entry_from_key
from proxy.config import Config
from proxy.errors import ConfigError

__all__ = [
    "ATTESTATION_PATH",
    "AttestationEndpoint",
    "attestation_entry",
    "attestation_provider",
    "attestation_renewal",
    "make_endpoint",
    "prepare_attestation",
]

log = logging.getLogger("teeproxy.attest")

ATTESTATION_PATH = "/.well-known/tee/attestation"


def _settings(cfg: Config, sealer: Sealer | None) -> ProviderSettings:
    a = cfg.attestation
    key_file = a.simulated_key_file or str(ratls_dir(cfg.state_dir) / "dev-attestation-key.sealed")
    return ProviderSettings(
        configfs_root=a.configfs_tsm_dir,
        gramine_dir=a.gramine_dir,
        dstack_socket=a.dstack_socket,
        timeout=a.quote_timeout,
        simulated_key_file=key_file,
        simulated_sealer=sealer,
    )


def attestation_provider(cfg: Config, sealer: Sealer) -> QuoteProvider | None:
    """The configured provider (blocking: detection and the simulated key touch files)."""
    if cfg.attestation.provider == "none":
        return None
    try:
        return make_provider(cfg.attestation.provider, _settings(cfg, sealer))
    except QuoteProviderError as e:
        raise ConfigError("attestation.provider", str(e)) from e


def prepare_attestation(cfg: Config, sealer: Sealer, now: dt.datetime | None = None) -> None:
    """Supervisor step (blocking): a fresh RA-TLS certificate, or a clear error."""
    provider = attestation_provider(cfg, sealer)
    if provider is None:
        if cfg.attestation.provider == "auto":
            log.warning("no TEE interface detected: RA-TLS certificate and evidence are off")
        if cfg.receipts.enabled:
            log.warning("no attestation provider: receipts are off (no signing key to bind)")
        return
    material = RaTlsMaterial(
        server_name=cfg.attestation.server_name,
        provider=provider.name,
        lifetime=dt.timedelta(seconds=cfg.attestation.cert_lifetime),
        signing_address=_prepare_signing_address(cfg, sealer),
    )
    try:
        prepare_ratls(cfg.state_dir, material, provider, sealer, now)
    except QuoteProviderError as e:
        # Fail closed with the field to look at: at start this stops ``serve``; at renewal
        # the supervisor logs it and retries while the old certificate lasts.
        raise ConfigError("attestation.provider", f"{provider.name}: no quote: {e}") from e


def _prepare_signing_address(cfg: Config, sealer: Sealer) -> str:
    """The receipt signing key's address to bind, or "" when receipts are off.

    Read from the unsealed key, never from the public ``address`` file (the host can write
    that one). A key that does not unseal stops start-up (``receipts.enabled`` names what
    to turn off; docs/ATTESTATION.md says how to rotate the key instead).
    """
    if not cfg.receipts.enabled:
        return ""
    try:
        return prepare_signing_key(cfg.state_dir, sealer).address_hex
    except (SigningKeyError, OSError) as e:
        raise ConfigError("receipts.enabled", f"receipt signing key: {e}") from e


def attestation_renewal(cfg: Config) -> dt.datetime | None:
    """When the RA-TLS certificate is due (None when attestation is off or none exists)."""
    if cfg.attestation.provider == "none":
        return None
    return ratls_renewal_due(cfg.state_dir)


def attestation_entry(
    cfg: Config,
    sealer: Sealer,
    factory: Callable[[], ssl.SSLContext],
    now: dt.datetime | None = None,
) -> CertEntry | None:
    """Worker step (blocking): the RA-TLS store entry, or None (logged) when unusable.

    An expired or unreadable RA-TLS certificate must not take the other certificates down
    with it: attestation alone fails closed (clients asking for it get no certificate for
    the name, or the default one, which does not verify as RA-TLS).
    """
    if cfg.attestation.provider == "none":
        return None
    try:
        stored = load_ratls(cfg.state_dir, sealer)
        if stored is None:
            return None
        pem, key = stored
        return entry_from_key(pem, key, factory, source="ratls", now=now)
    except (CertError, OSError, ValueError) as e:
        log.error("RA-TLS certificate not served: %s", e)
        return None


def _json(status: int, doc: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(doc, sort_keys=True).encode(),
        content_type="application/json",
        headers={"Cache-Control": "no-store", **headers},
    )


def _error(status: int, kind: str, message: str, **headers: str) -> web.Response:
    return _json(status, {"error": {"type": kind, "message": message}}, **headers)


class AttestationEndpoint:
    """``GET /.well-known/tee/attestation?nonce=HEX`` in one worker."""

    def __init__(
        self,
        cfg: Config,
        holder: StoreHolder,
        gate: QuoteGate | None,
        *,
        tee: str = "",
        signing_address: str = "",
    ) -> None:
        self.cfg = cfg
        self.holder = holder
        self.gate = gate
        self.tee = tee
        self.signing_address = signing_address  # "0x" + 40 hex, or "" (receipts off)

    def _connection_entry(self, request: web.BaseRequest) -> CertEntry | None:
        transport = request.transport
        sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
        if sslobj is None:
            return None
        ctx = sslobj.context
        for entry in self.holder.current.entries:
            if entry.context is ctx:
                return entry
        return None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return _error(405, "method_not_allowed", "use GET", Allow="GET, HEAD")
        if self.gate is None:
            return _error(503, "attestation_unavailable", "no TEE attestation provider")
        try:
            nonce = parse_nonce(request.query.get("nonce", ""))
        except EvidenceError as e:
            return _error(400, "invalid_nonce", str(e))
        entry = self._connection_entry(request)
        if entry is None:
            # The certificate of this connection was rotated out since the handshake (or
            # the request did not come over TLS): the client should reconnect.
            return _error(503, "certificate_rotated", "reconnect and ask again")
        acme_account, acme_keys = await self._acme()
        claims = encode_evidence_claims(
            nonce,
            entry.spki_sha256,
            int(time.time()),
            acme_account=acme_account,
            acme_keys=acme_keys,
            signing_address=self.signing_address,
        )
        try:
            quote = await asyncio.wait_for(
                self.gate.quote(report_data_for_claims(claims)),
                self.cfg.attestation.quote_timeout,
            )
        except QuoteRateLimited:
            return _error(
                429, "rate_limited", "too many attestation requests", **{"Retry-After": "1"}
            )
        except (QuoteProviderError, TimeoutError) as e:
            log.error("quote for the evidence endpoint failed: %s", e)
            return _error(503, "quote_failed", "the TEE did not produce a quote")
        tee = self.tee
        if not tee:
            try:
                tee = str(parse_evidence(quote).tee)
            except QuoteError:
                tee = "unknown"
        doc = build_evidence(quote, claims, tee=tee, provider=self.gate.provider.name, gpu=None)
        return _json(200, doc)

    async def _acme(self) -> tuple[str, list[bytes]]:
        if not self.cfg.acme.enabled:
            return "", []
        from proxy.acme_runtime import read_evidence  # noqa: PLC0415 - issue 3

        try:
            doc = json.loads(await asyncio.to_thread(read_evidence, self.cfg.state_dir))
            keys = [bytes.fromhex(k["spki_sha256"]) for k in doc.get("certificate_keys", [])]
            return str(doc.get("account_uri") or ""), keys
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ACME evidence unreadable, attesting without it: %s", e)
            return "", []


def make_endpoint(cfg: Config, holder: StoreHolder, sealer: Sealer) -> AttestationEndpoint | None:
    """Blocking: the worker's endpoint with its own provider and gate (None when disabled)."""
    if not cfg.attestation.endpoint:
        return None
    try:
        provider = attestation_provider(cfg, sealer)
    except ConfigError as e:
        log.error("attestation endpoint without a provider: %s", e)
        provider = None
    gate = (
        QuoteGate(provider, rate=cfg.attestation.quote_rate, burst=cfg.attestation.quote_burst)
        if provider is not None
        else None
    )
    return AttestationEndpoint(
        cfg, holder, gate, signing_address=_endpoint_signing_address(cfg, sealer, provider)
    )


def _endpoint_signing_address(cfg: Config, sealer: Sealer, provider: QuoteProvider | None) -> str:
    """The address the evidence names: from the unsealed key, as the certificate's is.

    A worker that cannot unseal the key (the supervisor could a moment ago) logs it and
    attests no address: a verifier then sees the certificate and the evidence disagree and
    refuses, instead of trusting an address this process cannot sign with.
    """
    if not cfg.receipts.enabled or provider is None:
        return ""
    try:
        return load_signing_key(cfg.state_dir, sealer).address_hex
    except (SigningKeyError, OSError) as e:
        log.error("evidence without a signing address: %s", e)
        return ""
