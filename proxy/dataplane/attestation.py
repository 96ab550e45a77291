"""The fresh-evidence endpoint of each worker: ``GET /.well-known/tee/attestation?nonce=HEX``.

It answers a fresh quote whose report_data binds the nonce and the SPKI hash of the
certificate used on *this* connection (ACME, RA-TLS or any other), plus the ACME account
and keys when ACME is on, and the receipt signing address when receipts are on; on an
SEV-SNP guest the answer's ``endorsements`` carry the certificate table the TEE handed out
with the report (configfs-tsm ``auxblob``: VCEK, ASK, ARK), so a client verifies it
without AMD's KDS. Quotes are
serialized and rate-limited per worker (:class:`certmgr.attest.providers.gate.QuoteGate`);
over the limit the answer is 429. The handshake never waits for a quote. With GPUs
(``[attestation] gpu``, :mod:`certmgr.attest.providers.nvml`) the claims also name their
mode and number, and every GPU's SPDM report over :func:`certmgr.attest.nvidia.gpu_nonce`
of the same claims is served in ``gpu``, collected through the same gate (one token per
answer); in ``enforce`` mode an answer without them is a 503, never evidence. JSON shape:
:mod:`certmgr.attest.evidence` and docs/ATTESTATION.md. The RA-TLS certificate itself is
prepared by the supervisor (:mod:`proxy.control.attestation`) and loaded by
:mod:`proxy.dataplane.certstore`.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Final

from aiohttp import web

from certmgr.attest.endorsements import compact_cert_table
from certmgr.attest.evidence import build_evidence, encode_evidence_claims, parse_nonce
from certmgr.attest.nvidia import DeviceEvidence, gpu_nonce
from certmgr.attest.providers.gate import QuoteGate
from certmgr.attest.providers.nvml import GpuState, NvmlGpuSource
from certmgr.attest.quote import is_snp_report, parse_evidence
from certmgr.attest.ratls import report_data_for_claims
from certmgr.errors import (
    EndorsementsError,
    EvidenceError,
    QuoteError,
    QuoteProviderError,
    QuoteRateLimited,
)
from certmgr.store import CertEntry, StoreHolder
from proxy.config import Config
from proxy.dataplane.acme import read_evidence
from proxy.dataplane.endpoints import LocalEndpoints
from proxy.dataplane.responses import json_error, json_response
from proxy.log import attest_log as log
from proxy.runtime import Runtime

__all__ = ["ATTESTATION_PATH", "AttestationEndpoint", "make_endpoint"]

ATTESTATION_PATH: Final = "/.well-known/tee/attestation"


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
        gpus: NvmlGpuSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.holder = holder
        self.gate = gate
        self.tee = tee
        self.signing_address = signing_address  # "0x" + 40 hex, or "" (receipts off)
        self.gpus = gpus
        self.gpu_enforce = cfg.attestation.gpu == "enforce"

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

    def register(self, endpoints: LocalEndpoints) -> None:
        endpoints.add(ATTESTATION_PATH, self.handle)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return json_error(405, "method_not_allowed", "use GET", headers={"Allow": "GET, HEAD"})
        if self.gate is None:
            return json_error(503, "attestation_unavailable", "no TEE attestation provider")
        try:
            nonce = parse_nonce(request.query.get("nonce", ""))
        except EvidenceError as e:
            return json_error(400, "invalid_nonce", str(e))
        entry = self._connection_entry(request)
        if entry is None:
            # The certificate of this connection was rotated out since the handshake (or
            # the request did not come over TLS): the client should reconnect.
            return json_error(503, "certificate_rotated", "reconnect and ask again")
        acme_account, acme_keys = await self._acme()
        timeout = self.cfg.attestation.quote_timeout
        state: GpuState | None = None
        token_taken = False
        try:
            if self.gpus is not None:
                state = await asyncio.wait_for(self.gate.call(self.gpus.state), timeout)
                token_taken = True
        except QuoteRateLimited:
            return _rate_limited()
        except (QuoteProviderError, TimeoutError) as e:
            log.error("GPU state for the evidence endpoint failed: %s", e)
            state = None
        if self.gpu_enforce and (state is None or state.mode != "cc" or not state.count):
            why = (
                "no GPU state" if state is None else f"GPU mode {state.mode}, {state.count} GPU(s)"
            )
            log.error("GPU attestation enforced and not possible: %s", why)
            return json_error(503, "gpu_attestation_failed", "the GPUs cannot be attested")
        claims = encode_evidence_claims(
            nonce,
            entry.spki_sha256,
            int(time.time()),
            acme_account=acme_account,
            acme_keys=acme_keys,
            signing_address=self.signing_address,
            gpu_mode=state.mode if state is not None else "",
            gpu_count=state.count if state is not None else None,
        )
        try:
            evidence = await asyncio.wait_for(
                self.gate.evidence(report_data_for_claims(claims), take_token=not token_taken),
                timeout,
            )
        except QuoteRateLimited:
            return _rate_limited()
        except (QuoteProviderError, TimeoutError) as e:
            log.error("quote for the evidence endpoint failed: %s", e)
            return json_error(503, "quote_failed", "the TEE did not produce a quote")
        quote = evidence.quote
        gpu: tuple[DeviceEvidence, ...] | None = None
        if self.gpus is not None and state is not None and state.count:
            try:
                gpu = await asyncio.wait_for(
                    self.gate.call(self.gpus.collect, gpu_nonce(claims), take_token=False),
                    timeout,
                )
            except (QuoteProviderError, TimeoutError) as e:
                log.error("GPU evidence for the evidence endpoint failed: %s", e)
                if self.gpu_enforce:
                    return json_error(503, "gpu_attestation_failed", "the GPUs gave no evidence")
                gpu = ()  # the claims name the GPUs: a verifier sees them missing
        elif state is not None:
            gpu = ()
        tee = self.tee
        if not tee:
            try:
                tee = str(parse_evidence(quote).tee)
            except QuoteError:
                tee = "unknown"
        doc = build_evidence(
            quote,
            claims,
            tee=tee,
            provider=self.gate.provider.name,
            endorsements=_cert_table(quote, evidence.auxblob),
            gpu=gpu,
        )
        return json_response(200, doc)

    async def _acme(self) -> tuple[str, list[bytes]]:
        if not self.cfg.acme.enabled:
            return "", []
        try:
            doc = json.loads(await asyncio.to_thread(read_evidence, self.cfg.state_dir))
            keys = [bytes.fromhex(k["spki_sha256"]) for k in doc.get("certificate_keys", [])]
            return str(doc.get("account_uri") or ""), keys
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ACME evidence unreadable, attesting without it: %s", e)
            return "", []


def _cert_table(quote: bytes, auxblob: bytes) -> tuple[str, bytes] | None:
    """The evidence's ``endorsements`` for an SEV-SNP report: its certificate table,
    compacted (the kernel's auxblob is page-padded); None for other quotes, or when the
    table is missing or malformed (logged: the client then needs KDS)."""
    if not auxblob or not is_snp_report(quote):
        return None
    try:
        return ("sev-snp-cert-table", compact_cert_table(auxblob))
    except EndorsementsError as e:
        log.warning("SEV-SNP certificate table from the TEE unusable, not published: %s", e)
        return None


def _rate_limited() -> web.StreamResponse:
    return json_error(
        429, "rate_limited", "too many attestation requests", headers={"Retry-After": "1"}
    )


def make_endpoint(cfg: Config, holder: StoreHolder, runtime: Runtime) -> AttestationEndpoint | None:
    """The worker's endpoint with its gate over the runtime's provider (None: disabled).

    The address it names comes from the unsealed key, as the certificate's does. A worker
    that could not unseal it (the supervisor could a moment ago) attests no address: a
    verifier then sees the certificate and the evidence disagree and refuses, instead of
    trusting an address this process cannot sign with.
    """
    if not cfg.attestation.endpoint:
        return None
    a = cfg.attestation
    provider = runtime.provider
    gate = QuoteGate(provider, rate=a.quote_rate, burst=a.quote_burst) if provider else None
    return AttestationEndpoint(
        cfg, holder, gate, signing_address=runtime.signing_address, gpus=runtime.gpus
    )
