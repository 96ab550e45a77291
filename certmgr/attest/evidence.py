"""Fresh evidence served at ``GET /.well-known/tee/attestation?nonce=HEX``: claims and JSON.

The quote's report_data is ``SHA-256(claims) || 0^32`` (DESIGN "Trust formats"), where
``claims`` is a deterministic CBOR map (RFC 8949 section 4.2.1) with:

- ``"nonce"``: the client's nonce (bytes, 8 to 64);
- ``"pubkey-hash"``: ``[1, SHA-256(DER SPKI)]`` of the certificate the server presented on
  the connection the request came over (ACME or RA-TLS): the client compares it with the
  certificate it actually received;
- ``"iat"``: issue time, unix seconds;
- optionally ``"acme-account"`` (the ACME account URI), ``"acme-keys"`` (``[[1, hash], ...]``
  of every ACME certificate key the TEE generated), ``"signing-address"`` (the receipt
  signing key's Ethereum address, text ``0x`` + 40 lowercase hex, the same value as in the
  RA-TLS certificate's claims; :mod:`certmgr.receipts.signing`).

JSON shape (``application/json``)::

    {"version": 1, "tee": "tdx", "provider": "configfs-tsm",
     "quote": "<base64>", "claims": "<base64 CBOR>",
     "claims_view": {"nonce": "<hex>", "pubkey-hash": [1, "<hex>"], "iat": 1700000000, ...},
     "gpu": null}

``claims_view`` is informative only; a verifier uses the CBOR ``claims`` it hashes.
Pure module: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from certmgr.errors import EvidenceError

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

EVIDENCE_VERSION = 1
MAX_EVIDENCE_SIZE = 256 * 1024
MIN_NONCE = 8
MAX_NONCE = 64
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
) -> bytes:
    claims: dict[str, Any] = {
        "nonce": nonce,
        "pubkey-hash": [1, spki_sha256],
        "iat": issued_at,
    }
    if acme_account:
        claims["acme-account"] = acme_account
    if acme_keys:
        claims["acme-keys"] = [[1, k] for k in acme_keys]
    if signing_address:
        if _ADDRESS.fullmatch(signing_address) is None:
            raise EvidenceError("signing_address must be 0x + 40 lowercase hex digits")
        claims["signing-address"] = signing_address
    return cbor2.dumps(claims, canonical=True)


def _view(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list):
        return [_view(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _view(x) for k, x in v.items()}
    return v


def build_evidence(
    quote: bytes,
    claims_bytes: bytes,
    *,
    tee: str,
    provider: str,
    gpu: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "version": EVIDENCE_VERSION,
        "tee": tee,
        "provider": provider,
        "quote": base64.b64encode(quote).decode(),
        "claims": base64.b64encode(claims_bytes).decode(),
        "claims_view": _view(cbor2.loads(claims_bytes)),
        "gpu": dict(gpu) if gpu is not None else None,
    }


@dataclass(frozen=True, slots=True)
class Evidence:
    quote: bytes
    claims_bytes: bytes
    claims: Mapping[str, Any] = field(default_factory=dict)
    provider: str = ""
    gpu: Mapping[str, Any] | None = None


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
        claims = cbor2.loads(claims_bytes, max_depth=8, allow_duplicate_keys=False)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise EvidenceError(f"evidence claims: malformed CBOR: {e}") from e
    if not isinstance(claims, dict) or not all(isinstance(k, str) for k in claims):
        raise EvidenceError("evidence claims must be a CBOR map with text keys")
    gpu = doc.get("gpu")
    return Evidence(
        quote=quote,
        claims_bytes=claims_bytes,
        claims=claims,
        provider=str(doc.get("provider", "")),
        gpu=gpu if isinstance(gpu, dict) else None,
    )
