"""certmgr.attest.nitro: strict parsing of AWS Nitro attestation documents (COSE_Sign1 per
RFC 9052, AWS's document rules), on the two real documents in tests/data/nitro."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.measurement import TeeType, measurement_id
from certmgr.attest.nitro import (
    MAX_DOCUMENT_SIZE,
    looks_like_cose_sign1,
    parse_cose_sign1,
    parse_nitro_document,
    parse_nitro_quote,
    sig_structure,
)
from certmgr.attest.quote import parse_evidence
from certmgr.errors import QuoteError
from tests.helpers.nitro import (
    DSTACK_ATTEST,
    NSM_QVL,
    flip,
    nitro_vector,
    payload_map,
    rebuild,
    with_payload,
)

PCR0_NSM = (
    "5cb702954321826d7939d6da829a940d787fcf32357beb8e"
    "ae1ddf33c28c17d36f3ac3ba6828fdf7edeed02889702da6"
)
PCR1 = (
    "0343b056cd8485ca7890ddd833476d78460aed2aa161548e"
    "4e26bedf321726696257d623e8805f3f605946b3d8b0c6aa"
)
PCR2_NSM = (
    "743ea12db9aba9440a8197f7ac9aeda43cfbb1587473ff75"
    "77415ac5be116bc026dfa836db6713930474d1aa0d06b049"
)


def test_real_document_fields_are_the_ones_upstream_expects() -> None:
    doc = parse_nitro_document(nitro_vector(NSM_QVL[0]))
    assert doc.module_id == "i-0827e799ec9232d44-enc019b55a68bd2ed4b"
    assert doc.digest == "SHA384"
    assert doc.timestamp_ms == 1766668537578
    assert doc.pcrs[0].hex() == PCR0_NSM
    assert doc.pcrs[1].hex() == PCR1
    assert doc.pcrs[2].hex() == PCR2_NSM
    assert sorted(doc.pcrs) == list(range(16))
    assert doc.user_data == bytes(64)
    assert doc.public_key is None and doc.nonce is None  # written as null by the NSM
    assert len(doc.cabundle) == 4 and doc.cose.alg == -35


def test_second_real_document_matches_dstack_snapshot() -> None:
    doc = parse_nitro_document(nitro_vector(DSTACK_ATTEST[0]))
    assert doc.module_id == "i-0827e799ec9232d44-enc019b5640fdf630d6"
    assert doc.timestamp_ms == 1766678659346
    assert doc.pcrs[0].hex().startswith("eb7d0dab") and doc.pcrs[0].hex().endswith("6cf74a")
    assert doc.pcrs[2].hex().startswith("d7b0a767") and doc.pcrs[2].hex().endswith("f78811")
    assert doc.user_data is not None
    assert (
        doc.user_data.hex()
        == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" + "00" * 32
    )


def test_measurement_and_parsed_quote() -> None:
    raw = nitro_vector(NSM_QVL[0])
    q = parse_evidence(raw)
    assert q.tee is TeeType.NITRO and q.report_data == bytes(64)
    m = q.measurement
    assert (m.pcr0.hex(), m.pcr1.hex(), m.pcr2.hex()) == (PCR0_NSM, PCR1, PCR2_NSM)
    assert m.pcr8 == bytes(48) and m.pcr16 is None and not m.debug
    assert m.registers()["pcr0"] == PCR0_NSM and "pcr16" not in m.registers()
    assert len(measurement_id(m)) == 32
    assert q.signed == sig_structure(parse_cose_sign1(raw).protected, parse_cose_sign1(raw).payload)


def test_sig_structure_is_rfc9052_deterministic_cbor() -> None:
    for protected, payload in (
        (b"\xa1\x01\x38\x22", b"x" * 5000),
        (b"", b""),
        (b"a" * 23, b"b" * 300),
    ):
        assert sig_structure(protected, payload) == cbor2.dumps(
            ["Signature1", protected, b"", payload]
        )
    assert sig_structure(b"p", b"q", b"aad") == cbor2.dumps(["Signature1", b"p", b"aad", b"q"])


def test_tagged_cose_sign1_is_read() -> None:
    raw = nitro_vector(NSM_QVL[0])
    tagged = rebuild(raw, tag=True)
    assert tagged[:2] == b"\xd2\x84" and looks_like_cose_sign1(tagged)
    assert parse_nitro_document(tagged).module_id == parse_nitro_document(raw).module_id
    with pytest.raises(QuoteError, match="tag 19"):
        parse_cose_sign1(cbor2.dumps(cbor2.CBORTag(19, cose_list(raw))))


def cose_list(raw: bytes) -> list[object]:
    return list(cbor2.loads(raw))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"digest": "SHA256"}, "digest"),
        ({"module_id": ""}, "module_id"),
        ({"timestamp": 0}, "timestamp"),
        ({"timestamp": -5}, "timestamp"),
        ({"pcrs": {}}, "pcrs"),
        ({"pcrs": {0: bytes(48), 1: bytes(48)}}, "PCR2 is missing"),
        ({"pcrs": {0: bytes(48), 1: bytes(48), 2: bytes(32)}}, "PCR2"),
        ({"pcrs": {0: bytes(48), 1: bytes(48), 2: bytes(48), 32: bytes(48)}}, "index"),
        ({"pcrs": {0: bytes(48), 1: bytes(48), 2: bytes(48), "3": bytes(48)}}, "index"),
        ({"cabundle": []}, "cabundle"),
        ({"cabundle": [b"x"] * 9}, "cabundle"),
        ({"cabundle": [b"x" * 1025]}, "cabundle entry"),
        ({"certificate": b""}, "certificate"),
        ({"certificate": None}, "missing certificate"),
        ({"user_data": b"u" * 513}, "user_data"),
        ({"nonce": b"n" * 513}, "nonce"),
        ({"public_key": b""}, "public_key"),
        ({"public_key": "text"}, "public_key"),
        ({"extra": b""}, "unknown fields"),
    ],
)
def test_document_rules(edit: dict[str, object], match: str) -> None:
    with pytest.raises(QuoteError, match=match):
        parse_nitro_document(with_payload(nitro_vector(NSM_QVL[0]), **edit))


def test_required_field_may_not_be_null_but_optional_may() -> None:
    raw = nitro_vector(NSM_QVL[0])
    doc = payload_map(raw)
    doc["module_id"] = None
    with pytest.raises(QuoteError, match="missing module_id"):
        parse_nitro_document(rebuild(raw, payload=cbor2.dumps(doc)))
    assert parse_nitro_document(with_payload(raw, user_data=b"")).user_data == b""


def test_cose_structure_rules() -> None:
    raw = nitro_vector(NSM_QVL[0])
    with pytest.raises(QuoteError, match="ES384"):
        parse_cose_sign1(rebuild(raw, protected=cbor2.dumps({1: -7})))
    with pytest.raises(QuoteError, match="ES384"):
        parse_cose_sign1(rebuild(raw, protected=b""))
    with pytest.raises(QuoteError, match="crit"):
        parse_cose_sign1(rebuild(raw, protected=cbor2.dumps({1: -35, 2: [4]})))
    assert parse_cose_sign1(rebuild(raw, protected=cbor2.dumps({1: -35, 2: [1]}))).alg == -35
    with pytest.raises(QuoteError, match="crit must be protected"):
        parse_cose_sign1(rebuild(raw, unprotected={2: [1]}))
    with pytest.raises(QuoteError, match="both"):
        parse_cose_sign1(rebuild(raw, unprotected={1: -35}))
    with pytest.raises(QuoteError, match="96"):
        parse_cose_sign1(rebuild(raw, signature=b"s" * 95))
    with pytest.raises(QuoteError, match="array of 4"):
        parse_cose_sign1(cbor2.dumps(cose_list(raw)[:3]))
    with pytest.raises(QuoteError, match="bstr"):
        parse_cose_sign1(cbor2.dumps([*cose_list(raw)[:2], "payload", cose_list(raw)[3]]))
    with pytest.raises(QuoteError, match="malformed CBOR"):
        parse_cose_sign1(raw + b"\x00")  # trailing bytes
    with pytest.raises(QuoteError, match="malformed CBOR"):
        parse_cose_sign1(raw[:-1])
    with pytest.raises(QuoteError, match="exceeds"):
        parse_cose_sign1(b"\x84" + bytes(MAX_DOCUMENT_SIZE))


def test_payload_with_duplicate_keys_or_deep_nesting_is_refused() -> None:
    raw = nitro_vector(NSM_QVL[0])
    # {"digest": "SHA384", "digest": "SHA384"} hand-encoded: cbor2 cannot emit duplicates.
    dup = b"\xa2" + (b"\x66digest\x66SHA384") * 2
    with pytest.raises(QuoteError, match="malformed CBOR"):
        parse_nitro_document(rebuild(raw, payload=dup))
    deep = b"\x81" * 10 + b"\x00"
    with pytest.raises(QuoteError, match="malformed CBOR"):
        parse_nitro_document(rebuild(raw, payload=deep))


def test_debug_enclave_has_zero_pcrs() -> None:
    raw = with_payload(nitro_vector(NSM_QVL[0]), pcrs={i: bytes(48) for i in range(16)})
    assert parse_nitro_quote(raw).measurement.debug


def test_pcr16_is_in_the_measurement_and_its_absence_differs_from_zero() -> None:
    raw = nitro_vector(NSM_QVL[0])
    pcrs = {i: v for i, v in payload_map(raw)["pcrs"].items()}  # type: ignore[attr-defined]
    base = parse_nitro_quote(raw).measurement
    zero16 = parse_nitro_quote(with_payload(raw, pcrs={**pcrs, 16: bytes(48)})).measurement
    set16 = parse_nitro_quote(with_payload(raw, pcrs={**pcrs, 16: b"\x01" * 48})).measurement
    no8 = parse_nitro_quote(
        with_payload(raw, pcrs={i: v for i, v in pcrs.items() if i != 8})
    ).measurement
    assert zero16.pcr16 == bytes(48) and zero16.registers()["pcr16"] == "00" * 48
    ids = {measurement_id(m) for m in (base, zero16, set16, no8)}
    assert len(ids) == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_raise_only_quote_error(data: bytes) -> None:
    for candidate in (data, b"\x84" + data, b"\xd2\x84" + data):
        with contextlib.suppress(QuoteError):
            parse_nitro_document(candidate)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=4526), st.integers(min_value=1, max_value=255))
def test_fuzz_mutated_real_document_raises_only_quote_error(index: int, xor: int) -> None:
    raw = bytearray(nitro_vector(NSM_QVL[0]))
    raw[index] ^= xor
    try:
        doc = parse_nitro_document(bytes(raw))
    except QuoteError:
        return
    assert doc.cose.alg == -35  # whatever parses obeys the rules


def test_flip_changes_one_byte() -> None:
    assert flip(b"\x00\x01", 1) == b"\x00\x00"
