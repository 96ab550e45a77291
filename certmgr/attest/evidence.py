"""Fresh evidence served at ``GET /.well-known/tee/attestation?nonce=HEX``: claims and JSON.

The quote's report_data is ``SHA-256(claims) || 0^32`` (DESIGN "Trust formats"), where
``claims`` is an interoperable RA-TLS claims buffer (:mod:`certmgr.attest.claims`: a
deterministic CBOR map with text keys and byte-string values) holding:

- ``"nonce"``: the client's nonce (8 to 64 bytes), the bytes themselves;
- ``"pubkey-hash"``: the CBOR hash-entry ``[1, SHA-256(DER SPKI)]`` of the certificate the
  server presented on the connection the request came over (ACME or RA-TLS): the client
  compares it with the certificate it actually received;
- ``"iat"``: issue time, unix seconds;
- optionally ``"acme-account"`` (the ACME account URI), ``"acme-keys"`` (``[[1, hash], ...]``
  of every ACME certificate key the TEE generated), ``"signing-address"`` (the receipt
  signing key's Ethereum address, text ``0x`` + 40 lowercase hex, the same value as in the
  RA-TLS certificate's claims; :mod:`certmgr.receipts.signing`). Each of these byte strings
  holds the CBOR encoding of its value.

JSON shape (``application/json``), version 2 (version 1 put the claim values in the map
unwrapped, which no other producer or verifier reads)::

    {"version": 2, "tee": "tdx", "provider": "configfs-tsm",
     "quote": "<base64>", "claims": "<base64 CBOR>",
     "claims_view": {"nonce": "<hex>", "pubkey-hash": [1, "<hex>"], "iat": 1700000000, ...},
     "endorsements": null | {"format": "sev-snp-cert-table", "data": "<base64>"},
     "gpu": null | [{"arch": "HOPPER", "certificate": "<base64 PEM chain>",
                     "evidence": "<base64 SPDM request || response>", "nonce": "<hex>"}, ...]}

``claims_view`` is informative only; a verifier uses the CBOR ``claims`` it hashes.
``endorsements`` carries what verifying the quote needs when the TEE hands it out (the
SEV-SNP extended report's certificate table: VCEK, ASK, ARK). ``gpu`` is ``null`` when the
proxy collects no GPU evidence, else one entry per GPU and NVSwitch in NVIDIA's own JSON
shape (:mod:`certmgr.attest.nvidia`), each SPDM report over the nonce
:func:`certmgr.attest.nvidia.gpu_nonce` of ``claims``; the claims then also hold
``"gpu-mode"`` (``"cc"``: confidential computing on, devtools off; ``"devtools"``;
``"off"``) and ``"gpu-count"`` (the number of devices listed). Pure module: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certmgr.attest.claims import Claims, encode_claims, parse_claims
from certmgr.attest.nvidia import DeviceEvidence, encode_nvidia_evidence, parse_nvidia_evidence
from certmgr.errors import EvidenceError, RaTlsError

__all__ = [
    "EVIDENCE_VERSION",
    "MAX_EVIDENCE_SIZE",
    "MAX_NONCE",
    "MIN_NONCE",
    "Evidence",
    "build_evidence",
    "encode_evidence_claims",
    "parse_evidence_json",
    "parse_nonce",
]

EVIDENCE_VERSION = 2
MAX_EVIDENCE_SIZE = 256 * 1024
MIN_NONCE = 8
MAX_NONCE = 64
GPU_MODES = ("cc", "devtools", "off")
_ADDRESS = re.compile(r"0x[0-9a-f]{40}", re.ASCII)


def parse_nonce(text: str) -> bytes:
    """The ``nonce`` query parameter: hex, 8 to 64 bytes."""
    if len(text) > 2 * MAX_NONCE:
        raise EvidenceError(f"nonce longer than {MAX_NONCE} bytes")
    try:
        nonce = bytes.fromhex(text)
    except ValueError as e:
        raise EvidenceError("nonce must be hex") from e
    if len(nonce) < MIN_NONCE:
        raise EvidenceError(f"nonce shorter than {MIN_NONCE} bytes")
    return nonce


def encode_evidence_claims(
    nonce: bytes,
    spki_sha256: bytes,
    issued_at: int,
    *,
    acme_account: str = "",
    acme_keys: Sequence[bytes] = (),
    signing_address: str = "",
    gpu_mode: str = "",
    gpu_count: int | None = None,
) -> bytes:
    ours: dict[str, object] = {"iat": issued_at}
    if gpu_mode:
        if gpu_mode not in GPU_MODES:
            raise EvidenceError(f"gpu_mode must be one of {', '.join(GPU_MODES)}")
        ours["gpu-mode"] = gpu_mode
    if gpu_count is not None:
        ours["gpu-count"] = gpu_count
    if acme_account:
        ours["acme-account"] = acme_account
    if acme_keys:
        ours["acme-keys"] = [[1, k] for k in acme_keys]
    if signing_address:
        if _ADDRESS.fullmatch(signing_address) is None:
            raise EvidenceError("signing_address must be 0x + 40 lowercase hex digits")
        ours["signing-address"] = signing_address
    return encode_claims(None, ours, nonce=nonce, spki_sha256=spki_sha256)


def build_evidence(
    quote: bytes,
    claims_bytes: bytes,
    *,
    tee: str,
    provider: str,
    endorsements: tuple[str, bytes] | None = None,
    gpu: Sequence[DeviceEvidence] | None = None,
) -> dict[str, Any]:
    """The JSON document; ``endorsements`` is (format, bytes), e.g. ("sev-snp-cert-table",
    the extended report's certificate table)."""
    return {
        "version": EVIDENCE_VERSION,
        "tee": tee,
        "provider": provider,
        "quote": base64.b64encode(quote).decode(),
        "claims": base64.b64encode(claims_bytes).decode(),
        "claims_view": parse_claims(claims_bytes).view(),
        "endorsements": (
            {"format": endorsements[0], "data": base64.b64encode(endorsements[1]).decode()}
            if endorsements is not None
            else None
        ),
        "gpu": encode_nvidia_evidence(gpu) if gpu is not None else None,
    }


@dataclass(frozen=True, slots=True)
class Evidence:
    quote: bytes
    claims_bytes: bytes
    claims: Claims
    provider: str = ""
    endorsements: tuple[str, bytes] | None = None
    gpu: tuple[DeviceEvidence, ...] | None = None


def _b64(doc: Mapping[str, Any], key: str) -> bytes:
    v = doc.get(key)
    if not isinstance(v, str):
        raise EvidenceError(f"evidence: {key!r} must be a base64 string")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EvidenceError(f"evidence: {key!r} is not base64") from e


def parse_evidence_json(body: bytes) -> Evidence:
    """Strictly parse an evidence document (size-capped before decoding)."""
    if len(body) > MAX_EVIDENCE_SIZE:
        raise EvidenceError("evidence document too large")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise EvidenceError(f"evidence is not JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("version") != EVIDENCE_VERSION:
        raise EvidenceError(f"evidence must be an object with version {EVIDENCE_VERSION}")
    quote = _b64(doc, "quote")
    claims_bytes = _b64(doc, "claims")
    try:
        claims = parse_claims(claims_bytes)
    except RaTlsError as e:
        raise EvidenceError(f"evidence claims: {e}") from e
    endorsements: tuple[str, bytes] | None = None
    raw_end = doc.get("endorsements")
    if raw_end is not None:
        if not isinstance(raw_end, dict) or not isinstance(raw_end.get("format"), str):
            raise EvidenceError("evidence: 'endorsements' must be null or {format, data}")
        endorsements = (raw_end["format"][:64], _b64(raw_end, "data"))
    raw_gpu = doc.get("gpu")
    gpu = None
    if raw_gpu is not None:
        try:
            gpu = parse_nvidia_evidence(raw_gpu) if raw_gpu != [] else ()
        except EvidenceError as e:
            raise EvidenceError(f"evidence 'gpu': {e}") from e
    return Evidence(
        quote=quote,
        claims_bytes=claims_bytes,
        claims=claims,
        provider=str(doc.get("provider", "")),
        endorsements=endorsements,
        gpu=gpu,
    )
