"""Checking a receipt off chain: against the exact bodies, and against an attestation.

Pure: no I/O. :func:`verify_receipt` recomputes both body hashes (a supplied hash is never
trusted) and recovers the signer with ecrecover semantics; :func:`verify_attested_receipt`
takes the expected signer and measurement from a verified attestation.
"""

from __future__ import annotations

import hashlib
import hmac

import coincurve

from certmgr.attest.measurement import measurement_id
from certmgr.attest.verify import Verdict
from certmgr.errors import ReceiptError
from certmgr.receipts.format import (
    DEFAULT_DOMAIN,
    SECP256K1_N,
    Domain,
    Receipt,
    check_bytes,
    keccak256,
)

__all__ = ["recover_signer", "verify_attested_receipt", "verify_receipt"]


def recover_signer(digest: bytes, signature: bytes) -> bytes:
    """ecrecover: the 20-byte address that produced ``signature`` over ``digest``.

    Rejects what the EVM precompile plus OpenZeppelin's ``ECDSA.recover`` reject: ``v`` not
    27/28, ``r`` or ``s`` zero or not below the group order, and high ``s`` (EIP-2).
    """
    check_bytes("digest", digest, 32)
    check_bytes("signature", signature, 65)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    v = signature[64]
    if v not in (27, 28):
        raise ReceiptError(f"signature v is {v}, must be 27 or 28")
    if not 0 < r < SECP256K1_N:
        raise ReceiptError("signature r is out of range")
    if not 0 < s <= SECP256K1_N // 2:
        raise ReceiptError("signature s is zero or not low-s (EIP-2)")
    try:  # libsecp256k1's recovery, as the EVM's ecrecover precompile does it
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v - 27]), digest, hasher=None
        )
    except (ValueError, TypeError):
        raise ReceiptError("signature does not recover to a public key") from None
    return keccak256(public.format(compressed=False)[1:])[-20:]


def verify_receipt(
    receipt: Receipt,
    request_body: bytes,
    response_body: bytes,
    *,
    expected_signer: bytes | None,
    expected_measurement: bytes | None,
    domain: Domain = DEFAULT_DOMAIN,
) -> None:
    """Check ``receipt`` against the exact bodies; return normally only if all checks pass.

    In order: SHA-256 of each body equals the receipt's hash (recomputed here: a supplied
    hash is never trusted); the measurement equals ``expected_measurement`` when given; the
    signature recovers to ``receipt.signer``; the signer equals ``expected_signer`` when
    given. Pass ``None`` for an expectation only if the caller checks it another way (e.g.
    against the attested address); without ``expected_signer`` a receipt proves only that
    *someone* signed it. Failure is a :class:`ReceiptError` naming the failed check.
    """
    if not isinstance(receipt, Receipt):
        raise ReceiptError("not a Receipt")
    if expected_signer is not None:
        check_bytes("expected_signer", expected_signer, 20)
    if expected_measurement is not None:
        check_bytes("expected_measurement", expected_measurement, 32)
    if not hmac.compare_digest(hashlib.sha256(request_body).digest(), receipt.request_sha256):
        raise ReceiptError("request body does not match the receipt's request hash")
    if not hmac.compare_digest(hashlib.sha256(response_body).digest(), receipt.response_sha256):
        raise ReceiptError("response body does not match the receipt's response hash")
    if expected_measurement is not None and not hmac.compare_digest(
        receipt.measurement_id, expected_measurement
    ):
        raise ReceiptError("receipt measurement id is not the expected measurement")
    recovered = recover_signer(receipt.digest(domain), receipt.signature)
    if not hmac.compare_digest(recovered, receipt.signer):
        raise ReceiptError("signature does not match the receipt's signer (receipt altered)")
    if expected_signer is not None and not hmac.compare_digest(receipt.signer, expected_signer):
        raise ReceiptError("receipt signer is not the expected signer")


def verify_attested_receipt(
    receipt: Receipt,
    request_body: bytes,
    response_body: bytes,
    attestation: Verdict,
    *,
    domain: Domain = DEFAULT_DOMAIN,
) -> None:
    """:func:`verify_receipt` with both expectations taken from a verified attestation.

    ``attestation`` is the :class:`certmgr.attest.verify.Verdict` of the proxy's RA-TLS
    certificate or nonce evidence (``teeproxy verify``). It
    must be trusted and name a signing address; the receipt must then be signed by that
    address and name the attested measurement. This is the check that makes a receipt mean
    "an attested build answered this"; a :class:`ReceiptError` says which part failed.
    """
    if not attestation.trusted or attestation.measurement is None:
        reasons = ", ".join(str(r) for r in attestation.reasons) or "no measurement"
        raise ReceiptError(f"the attestation is not trusted ({reasons})")
    if attestation.signing_address is None:
        raise ReceiptError("the attestation names no signing address (receipts off?)")
    verify_receipt(
        receipt,
        request_body,
        response_body,
        expected_signer=attestation.signing_address,
        expected_measurement=measurement_id(attestation.measurement),
        domain=domain,
    )
