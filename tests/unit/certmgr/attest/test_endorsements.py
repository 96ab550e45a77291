"""certmgr.attest.endorsements: the 2.23.133.5.4.2 value, on the real dcap-qvl collateral
and the real SEV-SNP certificates.

Round trip: collateral JSON -> extension -> collateral that dcap-qvl accepts with the same
verdict as the original file at the same pinned time. Then the forms other producers write
(rats-tls: uint32-wide version, NUL-terminated buffers; PEM or hex CRLs) and one negative
case per shape rule, each with its message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json

import cbor2
import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.collateral import collateral_next_update, dcap_collateral, load_collateral
from certmgr.attest.endorsements import (
    INTEL_QUOTE_TAG,
    MAX_ENDORSEMENTS_SIZE,
    MAX_ENTRY_SIZE,
    SNP_REPORT_TAG,
    IntelCollateral,
    compact_cert_table,
    decode_endorsements,
    encode_intel_endorsements,
)
from certmgr.attest.sevsnp import parse_cert_table
from certmgr.errors import EndorsementsError
from tests.helpers.attest import T_SGX, T_TDX, collateral_text, vector
from tests.helpers.snp import dstack_cert_table, gosev_cert_table

PINNED = {"tdx_quote": T_TDX, "sgx_quote": T_SGX}


def _collateral(name: str = "tdx_quote") -> IntelCollateral:
    return IntelCollateral.from_json(collateral_text(name))


def _items(value: bytes) -> list[bytes]:
    top = cbor2.loads(value)
    assert isinstance(top, cbor2.CBORTag)
    return list(top.value)


def _rebuild(items: list[object], tag: int = INTEL_QUOTE_TAG) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, items))


@pytest.mark.parametrize("name", ["tdx_quote", "sgx_quote"])
def test_round_trip_gives_dcap_qvl_the_same_verdict(name: str) -> None:
    original = load_collateral(collateral_text(name))
    value = encode_intel_endorsements(_collateral(name))
    decoded = decode_endorsements(value)
    assert decoded.tag == INTEL_QUOTE_TAG and decoded.kind == "intel" and decoded.version == 3
    assert decoded.intel == _collateral(name)
    quote, now = vector(name), PINNED[name]
    want = dcap_qvl.verify(quote, original, now)
    for coll in (dcap_collateral(decoded.intel), load_collateral(decoded.intel.to_json())):
        got = dcap_qvl.verify(quote, coll, now)
        assert (got.status, list(got.advisory_ids)) == (want.status, list(want.advisory_ids))
    # A second later than the collateral's validity, both refuse alike.
    late = int(collateral_next_update(collateral_text(name))) + 1
    for coll in (original, dcap_collateral(decoded.intel)):
        with pytest.raises(ValueError, match=r"(?i)expired"):
            dcap_qvl.verify(quote, coll, late)


def test_real_collateral_fits_well_under_the_caps() -> None:
    for name in PINNED:
        assert len(encode_intel_endorsements(_collateral(name))) < 16 * 1024 < MAX_ENDORSEMENTS_SIZE


def test_what_teeproxy_writes() -> None:
    c = _collateral()
    value = encode_intel_endorsements(c)
    # tag 60000, array of 8, VERSION 3 as a 4-byte uint (rats-tls asserts that width).
    assert value[:9] == bytes.fromhex("d9ea60881a00000003")
    items = _items(value)
    assert len(items) == 8 and items[0] == 3
    tcb_body = items[1]
    assert tcb_body.endswith(b"\x00")
    assert (
        tcb_body[:-1]
        == (
            b'{"tcbInfo":'
            + c.tcb_info.encode()
            + b',"signature":"'
            + c.tcb_info_signature.hex().encode()
        )
        + b'"}'
    )
    assert json.loads(tcb_body[:-1])["tcbInfo"] == json.loads(c.tcb_info)
    assert items[2] == c.tcb_info_issuer_chain.encode() + b"\x00"
    assert items[3] == c.pck_crl and items[4] == c.root_ca_crl  # DER, exactly
    assert x509.load_der_x509_crl(items[4]).issuer.rfc4514_string().endswith("CN=Intel SGX Root CA")
    assert items[5] == c.pck_crl_issuer_chain.encode() + b"\x00"
    qe = json.loads(items[6][:-1])
    assert set(qe) == {"enclaveIdentity", "signature"}
    assert items[7] == c.qe_identity_issuer_chain.encode() + b"\x00"


def test_next_update_is_the_earliest_of_all_four() -> None:
    for name in PINNED:
        got = _collateral(name).next_update()
        assert got.timestamp() == collateral_next_update(collateral_text(name))
        assert got.tzinfo is not None


def test_reads_what_rats_tls_and_open_enclave_write() -> None:
    """Minimal-width version, collateral version 3.1 or OE's 1, a 9th CREATION_DATETIME,
    CRLs with a NUL, as PEM or as hex text, chains without their NUL."""
    c = _collateral()
    items: list[object] = list(_items(encode_intel_endorsements(c)))
    pem_crl = x509.load_der_x509_crl(c.pck_crl).public_bytes(serialization.Encoding.PEM)
    variants = [
        {0: 3},
        {0: 0x00010003},
        {0: 1, 8: b"2025-06-20T10:16:03Z\x00"},
        {3: c.pck_crl + b"\x00", 4: c.root_ca_crl + b"\x00"},
        {3: pem_crl + b"\x00", 4: c.root_ca_crl.hex().encode() + b"\x00"},
        {2: c.tcb_info_issuer_chain.encode(), 5: c.pck_crl_issuer_chain.encode()},
    ]
    for change in variants:
        edited = list(items) + ([None] if 8 in change else [])
        for i, v in change.items():
            edited[i] = v
        got = decode_endorsements(_rebuild(edited))
        assert got.intel == c, change
        assert got.version == change.get(0, 3)
    assert decode_endorsements(_rebuild([*items, b"2025-06-20T10:16:03Z\x00"])).created == (
        "2025-06-20T10:16:03Z"
    )


def _with(i: int, value: object) -> bytes:
    items: list[object] = list(_items(encode_intel_endorsements(_collateral())))
    items[i] = value
    return _rebuild(items)


def _tcb_body(text: str) -> bytes:
    return text.encode() + b"\x00"


_C = _collateral()
_SIG = _C.tcb_info_signature.hex()
_MALFORMED = [
    (b"\xff" * 16, "malformed CBOR"),
    (cbor2.dumps([1, 2]), "not CBOR tag 60000"),
    (_rebuild([], tag=60001), "not CBOR tag 60000"),
    (cbor2.dumps(cbor2.CBORTag(INTEL_QUOTE_TAG, {"a": 1})), "must wrap an array"),
    (_rebuild([3, b"x", b"y"]), "3 entries, expected 8 or 9"),
    (_rebuild([*_items(encode_intel_endorsements(_C)), b"t", b"u"]), "10 entries"),
    (_with(0, -1), "VERSION must be an unsigned 32-bit"),
    (_with(0, 1 << 32), "VERSION must be an unsigned 32-bit"),
    (_with(0, True), "VERSION must be an unsigned 32-bit"),
    (_with(0, "3"), "VERSION must be an unsigned 32-bit"),
    (_with(2, "text chain"), "entry 2 is not a byte string"),
    (_with(3, b""), "entry 3 has 0 bytes"),
    (_with(1, b"{" * (MAX_ENTRY_SIZE + 1)), f"entry 1 has {MAX_ENTRY_SIZE + 1} bytes"),
    (_with(1, b"not json\x00"), "TCB_INFO: "),
    (_with(1, _tcb_body(f'{{"tcbInfo":{_C.tcb_info}}}')), "exactly 'tcbInfo' and 'signature'"),
    (
        _with(1, _tcb_body(f'{{"tcbInfo":{_C.tcb_info},"signature":"{_SIG}","x":1}}')),
        "exactly 'tcbInfo' and 'signature'",
    ),
    (
        _with(1, _tcb_body(f'{{"tcbInfo":{_C.tcb_info},"tcbInfo":{_C.tcb_info}}}')),
        "duplicate member",
    ),
    (_with(1, _tcb_body(f'{{"tcbInfo":{_C.tcb_info},"signature":"abcd"}}')), "not 64 bytes"),
    (_with(1, _tcb_body(f'{{"tcbInfo":[1],"signature":"{_SIG}"}}')), "is not an object"),
    (
        _with(1, _tcb_body(f'{{"tcbInfo":{_C.tcb_info},"signature":"{_SIG}"}} extra')),
        "data after the JSON object",
    ),
    (_with(1, b'{"tcbInfo":\x00{},"signature":""}'), "NUL byte inside"),
    (_with(1, b"\xff\xfe\x00"), "is not text"),
    (_with(6, _tcb_body(f'{{"tcbInfo":{_C.tcb_info},"signature":"{_SIG}"}}')), "'enclaveIdentity'"),
    (_with(2, b"no PEM here\x00"), "TCB_ISSUER_CHAIN is not a PEM certificate chain"),
    (
        _with(2, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n\x00"),
        "TCB_ISSUER_CHAIN: ",
    ),
    (_with(3, b"\x30\x03\x02\x01\x01"), "CRL_PCK_CERT: "),
    (_with(3, _C.pck_crl + b"junk"), "not exactly one DER CRL"),
    (_with(4, b"zz not hex\x00"), "CRL_PCK_PROC_CA is not DER, PEM or hex"),
    (_with(5, b"\x00\x00"), "CRL_ISSUER_CHAIN_PCK_CERT"),
    (_rebuild([*_items(encode_intel_endorsements(_C)), 5]), "CREATION_DATETIME is not"),
    (_rebuild([*_items(encode_intel_endorsements(_C)), b"x" * 65]), "CREATION_DATETIME is not"),
    (cbor2.dumps(cbor2.CBORTag(INTEL_QUOTE_TAG, [[[[[[[[[[b"deep"]]]]]]]]]])), "malformed CBOR"),
    # SEV-SNP certificate tables travel in the CMW extension (RFC 9999), never here.
    (_rebuild([1, gosev_cert_table()], tag=SNP_REPORT_TAG), "none are defined for SEV-SNP"),
    (_rebuild([1, b"t"], tag=SNP_REPORT_TAG + 1), "not CBOR tag 60000"),
]


@pytest.mark.parametrize(("value", "message"), _MALFORMED)
def test_malformed_endorsements_are_refused_with_a_reason(value: bytes, message: str) -> None:
    with pytest.raises(EndorsementsError, match=message.replace("[", r"\[").replace("(", r"\(")):
        decode_endorsements(value)


def test_size_cap_before_decoding() -> None:
    """An oversized value is refused by its size (a huge bstr header would decode fine)."""
    value = b"\xd9\xea\x60\x88" + b"\x5a" + (MAX_ENDORSEMENTS_SIZE).to_bytes(4, "big")
    value += bytes(MAX_ENDORSEMENTS_SIZE)
    with pytest.raises(EndorsementsError, match="too large"):
        decode_endorsements(value)


def test_oversized_collateral_is_not_encoded() -> None:
    c = _collateral()
    huge = IntelCollateral(**{**_fields(c), "pck_crl": c.pck_crl + bytes(MAX_ENDORSEMENTS_SIZE)})
    with pytest.raises(EndorsementsError, match="too large for the certificate"):
        encode_intel_endorsements(huge)


def _fields(c: IntelCollateral) -> dict[str, object]:
    return {name: getattr(c, name) for name in IntelCollateral.__slots__}


def test_collateral_json_errors() -> None:
    for text in ("[]", "{}", '{"pck_crl_issuer_chain": 5}', "not json"):
        with pytest.raises(EndorsementsError, match="collateral JSON"):
            IntelCollateral.from_json(text)
    bad = json.loads(collateral_text("tdx_quote"))
    bad["tcb_info"] = '{"id":"TDX"}'
    with pytest.raises(EndorsementsError, match="nextUpdate"):
        IntelCollateral.from_json(json.dumps(bad)).next_update()


def test_snp_cert_table_compaction() -> None:
    """configfs-tsm's auxblob is page-sized: compacted, every entry kept."""
    for table in (gosev_cert_table(), dstack_cert_table()):
        compact = compact_cert_table(table.ljust(16384, b"\x00"))
        assert len(compact) < 16384
        assert [e.guid for e in parse_cert_table(compact)] == [
            e.guid for e in parse_cert_table(table)
        ]
    with pytest.raises(EndorsementsError, match="SEV-SNP certificate table: truncated"):
        compact_cert_table(b"\x01" * 30)
    with pytest.raises(EndorsementsError, match="empty"):
        compact_cert_table(b"")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzzed_values_raise_only_endorsements_error(data: st.DataObject) -> None:
    base = bytearray(
        data.draw(
            st.sampled_from(
                [encode_intel_endorsements(_C), _rebuild([1, b"t"], tag=SNP_REPORT_TAG)]
            )
        )
    )
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(base)))
    with contextlib.suppress(EndorsementsError):
        decode_endorsements(bytes(base[:cut]) if data.draw(st.booleans()) else bytes(base))


def test_round_trip_keeps_time_semantics() -> None:
    """The embedded collateral's validity is the original's (nothing re-dated)."""
    c = decode_endorsements(encode_intel_endorsements(_collateral())).intel
    assert c is not None
    assert c.next_update() == dt.datetime(2025, 7, 19, 10, 0, 35, tzinfo=dt.UTC)
