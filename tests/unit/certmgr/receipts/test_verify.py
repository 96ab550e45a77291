"""certmgr.receipts.verify: a receipt verifies against exactly the bytes sent and
received, the expected signer and measurement; any flipped byte or field fails."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest

from certmgr.attest.measurement import Measurement, TeeType, measurement_id
from certmgr.attest.verify import Failure, Reason, Verdict
from certmgr.errors import ReceiptError
from certmgr.receipts.format import IncrementalHash
from certmgr.receipts.signing import sign_receipt
from certmgr.receipts.verify import recover_signer, verify_attested_receipt, verify_receipt
from tests.helpers.receipts import (
    KEY,
    MEASUREMENT,
    OTHER_KEY,
    REQUEST,
    RESPONSE,
    flip,
    make,
    verify,
)

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


# -- verification ------------------------------------------------------------------------


def test_whole_body_receipt_verifies() -> None:
    receipt = make()
    verify(receipt)
    assert recover_signer(receipt.digest(), receipt.signature) == receipt.signer


def test_streamed_receipt_verifies_and_matches_whole_body_hash() -> None:
    chunks = [b'data: {"id":"x","choices":[]}\n\n'] * 50 + [b"data: [DONE]\n\n"]
    whole = b"".join(chunks)
    inc = IncrementalHash()
    for chunk in chunks:
        inc.update(memoryview(chunk))
    assert inc.digest() == hashlib.sha256(whole).digest()
    assert inc.length == len(whole)
    receipt = sign_receipt(
        KEY,
        request_sha256=hashlib.sha256(REQUEST).digest(),
        response_sha256=inc.digest(),
        model="llama-3",
        response_id="x",
        timestamp=1_763_740_800,
        measurement_id=MEASUREMENT,
    )
    verify(receipt, REQUEST, whole)
    with pytest.raises(ReceiptError, match="response body"):
        verify(receipt, REQUEST, whole[:-1])


@pytest.mark.parametrize("index", [0, len(REQUEST) // 2, len(REQUEST) - 1])
def test_flipped_request_byte_fails(index: int) -> None:
    with pytest.raises(ReceiptError, match="request body does not match"):
        verify(make(), request=flip(REQUEST, index))


@pytest.mark.parametrize("index", [0, len(RESPONSE) // 2, len(RESPONSE) - 1])
def test_flipped_response_byte_fails(index: int) -> None:
    with pytest.raises(ReceiptError, match="response body does not match"):
        verify(make(), response=flip(RESPONSE, index))


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_flipped_signature_byte_fails(index: int) -> None:
    receipt = make()
    tampered = dataclasses.replace(receipt, signature=flip(receipt.signature, index))
    with pytest.raises(ReceiptError, match="signature"):
        verify(tampered)


def test_signature_v_and_high_s_are_rejected() -> None:
    receipt = make()
    bad_v = dataclasses.replace(receipt, signature=receipt.signature[:64] + b"\x1d")
    with pytest.raises(ReceiptError, match="v is 29"):
        verify(bad_v)
    # The malleable twin (n - s, flipped v) recovers the same key; EIP-2 forbids it.
    s = int.from_bytes(receipt.signature[32:64], "big")
    twin = (
        receipt.signature[:32]
        + (SECP256K1_N - s).to_bytes(32, "big")
        + bytes([55 - receipt.signature[64]])
    )
    with pytest.raises(ReceiptError, match="low-s"):
        verify(dataclasses.replace(receipt, signature=twin))


def test_flipped_measurement_fails_against_expected_and_against_signature() -> None:
    receipt = make()
    tampered = dataclasses.replace(receipt, measurement_id=flip(receipt.measurement_id, 5))
    with pytest.raises(ReceiptError, match="not the expected measurement"):
        verify(tampered)
    with pytest.raises(ReceiptError, match="does not match the receipt's signer"):
        verify_receipt(tampered, REQUEST, RESPONSE, expected_signer=None, expected_measurement=None)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "llama-4"},
        {"model": ""},
        {"response_id": "chatcmpl-43"},
        {"timestamp": 1_763_740_801},
    ],
)
def test_altered_signed_field_fails(change: dict[str, Any]) -> None:
    tampered = dataclasses.replace(make(), **change)
    with pytest.raises(ReceiptError, match="does not match the receipt's signer"):
        verify(tampered)


def test_wrong_expected_signer_fails() -> None:
    receipt = make(OTHER_KEY)  # validly signed, but by someone else
    verify_receipt(receipt, REQUEST, RESPONSE, expected_signer=None, expected_measurement=None)
    with pytest.raises(ReceiptError, match="not the expected signer"):
        verify(receipt)


def test_claimed_signer_swapped_fails() -> None:
    receipt = make(OTHER_KEY)
    forged = dataclasses.replace(receipt, signer=make().signer)
    with pytest.raises(ReceiptError, match="does not match the receipt's signer"):
        verify(forged)


def test_verify_attested_receipt_takes_both_expectations_from_the_attestation() -> None:
    m = Measurement(tee=TeeType.SGX, debug=False, mr_enclave=b"\x01" * 32, mr_signer=b"\x02" * 32)
    other = dataclasses.replace(m, mr_enclave=b"\x03" * 32)
    signer = sign_receipt(
        KEY,
        request_sha256=hashlib.sha256(b"q").digest(),
        response_sha256=hashlib.sha256(b"a").digest(),
        model="m",
        response_id="r",
        timestamp=1,
        measurement_id=bytes(32),
    ).signer
    receipt = sign_receipt(
        KEY,
        request_sha256=hashlib.sha256(b"q").digest(),
        response_sha256=hashlib.sha256(b"a").digest(),
        model="m",
        response_id="r",
        timestamp=1,
        measurement_id=measurement_id(m),
    )
    good = Verdict(tee="sgx", measurement=m, signing_address=signer)
    verify_attested_receipt(receipt, b"q", b"a", good)
    cases = [
        (dataclasses.replace(good, signing_address=None), "names no signing address"),
        (dataclasses.replace(good, signing_address=b"\x09" * 20), "not the expected signer"),
        (dataclasses.replace(good, measurement=other), "not the expected measurement"),
        (
            dataclasses.replace(good, failures=(Failure(Reason.MEASUREMENT, "revoked"),)),
            "not trusted",
        ),
        (dataclasses.replace(good, measurement=None), "not trusted"),
    ]
    for verdict, reason in cases:
        with pytest.raises(ReceiptError, match=reason):
            verify_attested_receipt(receipt, b"q", b"a", verdict)
    with pytest.raises(ReceiptError, match="response body"):
        verify_attested_receipt(receipt, b"q", b"a!", good)
