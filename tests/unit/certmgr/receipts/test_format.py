"""certmgr.receipts.format: the EIP-712 digest equal to eth-account's, domain
separation, field bounds, the JSON and header forms and their parsers, the documented
test vector."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.errors import ReceiptError
from certmgr.eth import eth_import_guard
from certmgr.receipts.format import (
    MAX_JSON_BYTES,
    MAX_TEXT_BYTES,
    RECEIPT_TYPEHASH,
    Domain,
    IncrementalHash,
    Receipt,
    domain_separator,
    typed_data_hash,
)
from certmgr.receipts.verify import verify_receipt
from tests.helpers.receipts import (
    ACCOUNT,
    KEY,
    MEASUREMENT,
    REQUEST,
    RESPONSE,
    SIGNER,
    make,
    verify,
)

with eth_import_guard():
    from eth_account import Account
    from eth_account.messages import _hash_eip191_message, encode_typed_data


def eth_account_typed_data(receipt: Receipt, domain: dict[str, Any]) -> dict[str, Any]:
    domain_fields = [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}]
    if "chainId" in domain:
        domain_fields.append({"name": "chainId", "type": "uint256"})
    if "verifyingContract" in domain:
        domain_fields.append({"name": "verifyingContract", "type": "address"})
    return {
        "types": {
            "EIP712Domain": domain_fields,
            "Receipt": [
                {"name": "requestHash", "type": "bytes32"},
                {"name": "responseHash", "type": "bytes32"},
                {"name": "model", "type": "string"},
                {"name": "responseId", "type": "string"},
                {"name": "timestamp", "type": "uint64"},
                {"name": "measurementId", "type": "bytes32"},
            ],
        },
        "primaryType": "Receipt",
        "domain": domain,
        "message": {
            "requestHash": receipt.request_sha256,
            "responseHash": receipt.response_sha256,
            "model": receipt.model,
            "responseId": receipt.response_id,
            "timestamp": receipt.timestamp,
            "measurementId": receipt.measurement_id,
        },
    }


# -- interop with eth-account -------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (Domain(), {"name": "teeproxy-receipt", "version": "1"}),
        (
            Domain(chain_id=31337, verifying_contract=b"\xab" * 20),
            {
                "name": "teeproxy-receipt",
                "version": "1",
                "chainId": 31337,
                "verifyingContract": "0x" + "ab" * 20,
            },
        ),
    ],
)
def test_typed_data_hash_and_signature_equal_eth_accounts(
    ours: Domain, theirs: dict[str, Any]
) -> None:
    receipt = make(model="modèle ✓", response_id="", domain=ours)
    full = eth_account_typed_data(receipt, theirs)
    expected = _hash_eip191_message(encode_typed_data(full_message=full))
    assert receipt.digest(ours) == bytes(expected)
    assert typed_data_hash(
        request_sha256=receipt.request_sha256,
        response_sha256=receipt.response_sha256,
        model=receipt.model,
        response_id=receipt.response_id,
        timestamp=receipt.timestamp,
        measurement_id=receipt.measurement_id,
        domain=ours,
    ) == bytes(expected)
    # RFC 6979 deterministic nonces: the same key over the same digest gives the same bytes.
    signed = Account.sign_typed_data(KEY, full_message=full)
    assert receipt.signature == bytes(signed.signature)
    assert "0x" + receipt.signer.hex() == ACCOUNT.address.lower()


def test_domains_separate_signatures() -> None:
    domain = Domain(chain_id=1, verifying_contract=b"\x01" * 20)
    plain = make()
    chained = make(domain=domain)
    assert plain.digest() != chained.digest(domain)
    assert plain.signature != chained.signature
    verify_receipt(
        chained,
        REQUEST,
        RESPONSE,
        expected_signer=SIGNER,
        expected_measurement=MEASUREMENT,
        domain=domain,
    )
    with pytest.raises(ReceiptError, match="does not match the receipt's signer"):
        verify_receipt(chained, REQUEST, RESPONSE, expected_signer=None, expected_measurement=None)


@given(st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=8))
@settings(max_examples=50, deadline=None)
def test_incremental_hash_is_chunking_independent(body: bytes, cuts: list[int]) -> None:
    inc = IncrementalHash()
    points = sorted({min(c, len(body)) for c in cuts})
    start = 0
    for point in [*points, len(body)]:
        inc.update(body[start:point])
        start = point
    assert inc.digest() == hashlib.sha256(body).digest()


# -- bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"request_sha256": b"\x00" * 31}, "request_sha256 must be 32 bytes"),
        ({"response_sha256": b"\x00" * 33}, "response_sha256 must be 32 bytes"),
        ({"measurement_id": "00" * 32}, "measurement_id must be bytes"),
        ({"signature": b"\x00" * 64}, "signature must be 65 bytes"),
        ({"signer": b"\x00" * 21}, "signer must be 20 bytes"),
        ({"model": "x" * (MAX_TEXT_BYTES + 1)}, "model is 257 UTF-8 bytes"),
        ({"response_id": "é" * 129}, "response_id is 258 UTF-8 bytes"),
        ({"model": "\ud800"}, "lone surrogate"),
        ({"timestamp": -1}, "outside the uint64 range"),
        ({"timestamp": 2**64}, "outside the uint64 range"),
        ({"timestamp": True}, "timestamp must be an int"),
        ({"timestamp": 1.5}, "timestamp must be an int"),
    ],
)
def test_field_bounds(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ReceiptError, match=reason):
        dataclasses.replace(make(), **change)


def test_text_at_the_bound_is_accepted() -> None:
    receipt = make(model="x" * MAX_TEXT_BYTES, response_id="é" * (MAX_TEXT_BYTES // 2))
    verify(receipt)
    assert Receipt.from_header(receipt.to_header()) == receipt
    assert Receipt.from_json(receipt.to_json()) == receipt


# -- serialization -----------------------------------------------------------------------


def test_json_round_trip_and_format() -> None:
    receipt = make()
    data = receipt.to_json()
    obj = json.loads(data)
    assert obj["requestHash"] == "0x" + hashlib.sha256(REQUEST).hexdigest()
    assert obj["timestamp"] == 1_763_740_800
    assert len(obj["signature"]) == 132
    parsed = Receipt.from_json(data)
    assert parsed == receipt
    verify(parsed)


def _json_with(**changes: Any) -> bytes:
    obj = make().to_dict()
    obj.update(changes)
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b" " * (MAX_JSON_BYTES + 1), "at most 4096"),
        (b"\xff{}", "not UTF-8"),
        (b"[" * 3000 + b"]" * 3000, "at most 4096"),
        (b"[" * 2000, "does not parse"),
        (b"[]", "must be an object"),
        (b'{"a":1,"a":2}', "repeats key"),
        (_json_with(extra=1), "unexpected \\['extra'\\]"),
        (_json_with(version=2), "version must be 1"),
        (_json_with(version=True), "version must be 1"),
        (_json_with(timestamp="1"), "timestamp must be an integer"),
        (_json_with(timestamp=1.0), "timestamp must be an integer"),
        (_json_with(model=None), "model must be a string"),
        (_json_with(requestHash="0x" + "00" * 31), "requestHash must be 0x"),
        (_json_with(requestHash="00" * 33), "requestHash must be 0x"),
        (_json_with(signer="0x" + "0 " * 20), "signer must be 0x"),
        (_json_with(signer="0x" + "\u0660" * 40), "signer must be 0x"),
        (_json_with(signature="0x" + "zz" * 65), "signature must be 0x"),
        (_json_with(timestamp=2**64), "uint64"),
        (b'{"timestamp": NaN}', "NaN"),
    ],
)
def test_malformed_json_is_rejected(data: bytes, reason: str) -> None:
    with pytest.raises(ReceiptError, match=reason):
        Receipt.from_json(data)


def test_json_missing_key_is_rejected() -> None:
    obj = make().to_dict()
    del obj["signer"]
    with pytest.raises(ReceiptError, match="missing \\['signer'\\]"):
        Receipt.from_json(json.dumps(obj).encode())


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(st.binary(max_size=MAX_JSON_BYTES + 16))
@settings(max_examples=300, deadline=None)
def test_from_json_fuzz_raw_bytes_only_raises_receipt_error(data: bytes) -> None:
    with contextlib.suppress(ReceiptError):
        Receipt.from_json(data)


@given(st.sampled_from(sorted(make().to_dict())), _JSON_VALUES)
@settings(max_examples=300, deadline=None)
def test_from_json_fuzz_field_values_only_raise_receipt_error(key: str, value: Any) -> None:
    obj = make().to_dict()
    original = obj[key]
    obj[key] = value
    try:
        parsed = Receipt.from_json(json.dumps(obj).encode())
    except ReceiptError:
        return
    # Accepted only if the value means the same as before, or is another valid value of a
    # free-form field: any string within bounds, any uint64 timestamp (freshness is policy).
    valid_timestamp = type(value) is int and 0 <= value < 2**64
    assert (
        value == original
        or key in {"model", "responseId"}
        or (key == "timestamp" and valid_timestamp)
    )
    assert parsed.to_dict()[key] == value or key in {"requestHash", "signer"}


def test_header_round_trip() -> None:
    receipt = make(model="modèle", response_id="")
    header = receipt.to_header()
    assert header.isascii()
    assert "=" not in header
    assert Receipt.from_header(header) == receipt
    assert len(header) < len(receipt.to_json())


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h: h + "=", "base64url"),
        (lambda h: h.replace(h[10], "+", 1), "base64url"),
        (lambda h: "A" * 2000, "at most 1024"),
        (lambda h: h[:-4], "truncated|trailing"),
        (lambda h: h + "AAAA", "trailing"),
        (lambda h: h[:100], "too short"),
        (lambda h: "Ag" + h[2:], "version 2|canonical"),
    ],
)
def test_malformed_header_is_rejected(mutate: Any, reason: str) -> None:
    with pytest.raises(ReceiptError, match=reason):
        Receipt.from_header(mutate(make().to_header()))


@given(st.text(max_size=1100))
@settings(max_examples=200, deadline=None)
def test_from_header_fuzz_only_raises_receipt_error(value: str) -> None:
    with contextlib.suppress(ReceiptError):
        Receipt.from_header(value)


# -- the documented test vector ------------------------------------------------------------


DOC = Path(__file__).resolve().parents[4] / "docs" / "RECEIPTS.md"


def test_documented_vector_matches_code() -> None:
    """docs/RECEIPTS.md gives an on-chain implementer a vector; it must be what we produce."""
    doc = DOC.read_text(encoding="utf-8")
    receipt = make(
        request=b"{}",
        response=b'{"id":"r1"}',
        model="m",
        response_id="r1",
        timestamp=1_700_000_000,
    )
    assert "0x" + ACCOUNT.address[2:].lower() in doc
    for value in (
        RECEIPT_TYPEHASH,
        domain_separator(),
        receipt.request_sha256,
        receipt.response_sha256,
        receipt.digest(),
        receipt.signature,
    ):
        assert "0x" + value.hex() in doc
    verify_receipt(
        receipt,
        b"{}",
        b'{"id":"r1"}',
        expected_signer=SIGNER,
        expected_measurement=MEASUREMENT,
    )
