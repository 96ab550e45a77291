"""certmgr.attest.sevsnp: ATTESTATION_REPORT and certificate-table parsing, on real vectors."""

from __future__ import annotations

import contextlib
import struct
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.measurement import TeeType
from certmgr.attest.quote import parse_evidence
from certmgr.attest.sevsnp import (
    ARK_GUID,
    ASK_GUID,
    MAX_CERT_TABLE_SIZE,
    SNP_REPORT_SIZE,
    VCEK_GUID,
    CertTableEntry,
    SigningKey,
    SnpProduct,
    TcbVersion,
    build_cert_table,
    parse_cert_table,
    parse_snp,
    parse_snp_report,
)
from certmgr.errors import CertmgrError, QuoteError
from tests.helpers.snp import (
    DSTACK_CHIP_PREFIX,
    DSTACK_CHIP_SUFFIX,
    DSTACK_HOST_DATA,
    DSTACK_MEASUREMENT,
    GOSEV_CHIP_PREFIX,
    GOSEV_CHIP_SUFFIX,
    GOSEV_MEASUREMENT,
    certs,
    data,
    dstack_report,
    edit,
    gosev_report,
    synthetic_report,
    with_key_info,
    with_policy,
)


def test_go_sev_guest_report_v2() -> None:
    r = parse_snp(gosev_report())
    assert r.version == 2
    assert r.measurement == GOSEV_MEASUREMENT
    assert r.report_data == b"\x01\x02\x03\x04\x05" + bytes(59)
    assert r.policy.raw == 0xB0000
    assert (r.policy.smt_allowed, r.policy.debug_allowed, r.policy.migrate_ma_allowed) == (
        True,
        True,
        False,
    )
    assert (r.policy.abi_major, r.policy.abi_minor) == (0, 0)
    assert r.reported_tcb.components() == {"blSPL": 2, "teeSPL": 0, "snpSPL": 5, "ucodeSPL": 68}
    assert not r.turin_tcb and r.reported_tcb.fmc is None
    assert r.chip_id.startswith(GOSEV_CHIP_PREFIX) and r.chip_id.endswith(GOSEV_CHIP_SUFFIX)
    assert r.signing_key is SigningKey.VCEK
    assert r.signature_algo == 1
    assert r.vmpl == 0
    assert r.id_key_digest == bytes(48)
    assert (r.cpuid_family, r.cpuid_model, r.cpuid_stepping) == (None, None, None)
    assert r.product is None
    assert r.launch_mit_vector is None and r.current_mit_vector is None
    assert r.platform_info.smt_enabled
    assert 0 < r.signature_r < 2**384 and 0 < r.signature_s < 2**384
    assert r.signed == gosev_report()[:0x2A0]


def test_dstack_report_v3() -> None:
    r = parse_snp(dstack_report())
    assert r.version == 3
    assert r.measurement == DSTACK_MEASUREMENT
    assert r.host_data == DSTACK_HOST_DATA
    assert r.report_data == b"attest-test-fixture-2026".ljust(64, b"\x00")
    assert r.policy.raw == 0x30000
    assert r.policy.smt_allowed and not r.policy.debug_allowed
    assert r.chip_id.startswith(DSTACK_CHIP_PREFIX) and r.chip_id.endswith(DSTACK_CHIP_SUFFIX)
    assert (r.cpuid_family, r.cpuid_model, r.cpuid_stepping) == (0x19, 0x01, 0x01)
    assert r.product is SnpProduct.MILAN
    assert r.reported_tcb.components() == {
        "blSPL": 4,
        "teeSPL": 0,
        "snpSPL": 23,
        "ucodeSPL": 213,
    }
    assert r.current_tcb.snp == 24
    assert (r.current_major, r.current_minor, r.current_build) == (1, 55, 29)
    assert (r.committed_major, r.committed_minor, r.committed_build) == (1, 55, 29)
    assert r.platform_info.alias_check_complete and r.platform_info.ecc_enabled


def test_dstack_scale_wrapper_holds_the_same_report() -> None:
    assert data("dstack_sev_snp_attestation.bin")[4 : 4 + SNP_REPORT_SIZE] == dstack_report()


def test_parse_snp_report_keeps_parsed_quote_shape() -> None:
    q = parse_evidence(dstack_report())
    assert q.measurement.measurement == DSTACK_MEASUREMENT
    assert q.measurement.host_data == DSTACK_HOST_DATA
    assert not q.measurement.debug
    assert q.version == 3
    assert q.signed == dstack_report()[:0x2A0]
    assert parse_snp_report(gosev_report()).measurement.debug


def test_tcb_layouts() -> None:
    raw = int.from_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]), "little")
    mg = TcbVersion.decode(raw, turin=False)
    assert (mg.bootloader, mg.tee, mg.snp, mg.microcode, mg.fmc) == (1, 2, 7, 8, None)
    assert mg.reserved == (3, 4, 5, 6)
    t = TcbVersion.decode(raw, turin=True)
    assert (t.fmc, t.bootloader, t.tee, t.snp, t.microcode) == (1, 2, 3, 4, 8)
    assert t.reserved == (5, 6, 7)
    assert list(t.components()) == ["fmcSPL", "blSPL", "teeSPL", "snpSPL", "ucodeSPL"]
    assert t.at_least(TcbVersion.decode(raw - 1, turin=True))
    with pytest.raises(QuoteError):
        t.at_least(mg)


def test_turin_layout_from_cpuid() -> None:
    tcb = int.from_bytes(bytes([9, 3, 1, 7, 0, 0, 0, 0x48]), "little")
    r = parse_snp(synthetic_report(family=0x1A, model=0x02, reported_tcb=tcb))
    assert r.product is SnpProduct.TURIN and r.turin_tcb
    assert r.reported_tcb.components() == {
        "fmcSPL": 9,
        "blSPL": 3,
        "teeSPL": 1,
        "snpSPL": 7,
        "ucodeSPL": 0x48,
    }
    # Genoa (19h model 11h) uses the Milan/Genoa layout.
    g = parse_snp(synthetic_report(family=0x19, model=0x11, reported_tcb=tcb))
    assert g.product is SnpProduct.GENOA and not g.turin_tcb
    # A version 2 report names no CPU: the caller's product decides.
    assert parse_snp(synthetic_report(version=2), product=SnpProduct.TURIN).turin_tcb
    with pytest.raises(QuoteError, match="CPUID names Milan"):
        parse_snp(dstack_report(), product=SnpProduct.GENOA)


def test_version_5_mitigation_vectors() -> None:
    raw = edit(synthetic_report(version=5), 0x1F8, struct.pack("<QQ", 0x11, 0x22))
    r = parse_snp(raw)
    assert (r.launch_mit_vector, r.current_mit_vector) == (0x11, 0x22)
    # In a version 3 report the same bytes are reserved.
    with pytest.raises(QuoteError, match="reserved"):
        parse_snp(edit(synthetic_report(version=3), 0x1F8, b"\x11"))


@pytest.mark.parametrize(
    ("offset", "what"),
    [
        (0x4C, "reserved"),
        (0x18B, "reserved"),
        (0x19F, "reserved"),
        (0x1EB, "reserved"),
        (0x1EF, "reserved"),
        (0x1F8, "reserved"),
        (0x29F, "reserved"),
        (0x2A0 + 144, "signature tail"),
        (0x4A0 - 1, "signature tail"),
        (0x2A0 + 48, "exceeds 48"),
        (0x2A0 + 72 + 71, "exceeds 48"),
    ],
)
def test_reserved_fields_must_be_zero(offset: int, what: str) -> None:
    with pytest.raises(QuoteError, match=what):
        parse_snp(edit(dstack_report(), offset, b"\x01"))


def test_v2_cpuid_bytes_are_reserved() -> None:
    with pytest.raises(QuoteError, match="reserved"):
        parse_snp(edit(gosev_report(), 0x188, b"\x19"))


def test_policy_and_key_info_rules() -> None:
    with pytest.raises(QuoteError, match="bit 17"):
        parse_snp(with_policy(dstack_report(), 0x10000))
    with pytest.raises(QuoteError, match="63:26"):
        parse_snp(with_policy(dstack_report(), 0x30000 | 1 << 26))
    with pytest.raises(QuoteError, match="SIGNING_KEY 2 is reserved"):
        parse_snp(with_key_info(dstack_report(), 2 << 2))
    with pytest.raises(QuoteError, match="31:5"):
        parse_snp(with_key_info(dstack_report(), 1 << 5))
    r = parse_snp(with_key_info(dstack_report(), (1 << 2) | 3))
    assert (r.signing_key, r.mask_chip_key, r.author_key_en) == (SigningKey.VLEK, True, True)
    assert parse_snp(with_key_info(dstack_report(), 7 << 2)).signing_key is SigningKey.NONE
    p = parse_snp(with_policy(dstack_report(), 0x30000 | 0x3FF << 16 | 0x0201)).policy
    assert p.single_socket and p.cxl_allowed and p.page_swap_disabled and p.ciphertext_hiding
    assert (p.abi_major, p.abi_minor) == (2, 1)


def test_size_and_version() -> None:
    for bad in (b"", dstack_report()[:-1], dstack_report() + b"\x00"):
        with pytest.raises(QuoteError, match="1184"):
            parse_snp(bad)
    for version in (0, 1, 6, 0xFFFFFFFF):
        with pytest.raises(QuoteError, match="version"):
            parse_snp(edit(dstack_report(), 0, struct.pack("<I", version)))
    # Version 4 reads as version 3 (its reserved bytes must then be zero).
    assert parse_snp(edit(dstack_report(), 0, struct.pack("<I", 4))).version == 4


def test_signature_algo_is_left_to_the_verifier() -> None:
    # A non-ECDSA algorithm does not make the layout invalid; the verifier refuses it.
    raw = edit(dstack_report(), 0x34, struct.pack("<I", 2))
    raw = edit(raw, 0x2A0 + 200, b"\x01")
    assert parse_snp(raw).signature_algo == 2


# -- certificate table ----------------------------------------------------------------------


def _real_entries() -> list[CertTableEntry]:
    ask, ark = certs("ask_ark_milan.pem")
    return [
        CertTableEntry(VCEK_GUID, data("vcek.testcer")),
        CertTableEntry(ASK_GUID, ask),
        CertTableEntry(ARK_GUID, ark),
    ]


def test_cert_table_round_trip_with_real_certificates() -> None:
    entries = _real_entries()
    table = build_cert_table(entries)
    assert table[72:96] == bytes(24)  # the terminator follows three 24-byte entries
    assert parse_cert_table(table) == tuple(entries)
    # Page padding after the last certificate is ignored; GUID bytes are RFC 4122 order.
    assert parse_cert_table(table + bytes(4096)) == tuple(entries)
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert parse_cert_table(b"") == ()


def _header(guid: uuid.UUID, offset: int, length: int) -> bytes:
    return guid.bytes + struct.pack("<II", offset, length)


@pytest.mark.parametrize(
    ("table", "match"),
    [
        (b"\x00" * 23, "truncated"),
        (_header(VCEK_GUID, 48, 4) + b"abcd", "truncated"),  # no terminator
        (_header(VCEK_GUID, 48, 8) + bytes(24) + b"abcd", "exceeds"),
        (_header(VCEK_GUID, 24, 4) + bytes(24) + b"abcd", "table headers"),
        (_header(VCEK_GUID, 48, 0) + bytes(24), "empty"),
        (
            _header(VCEK_GUID, 72, 8) + _header(ASK_GUID, 76, 8) + bytes(24) + bytes(12),
            "overlap",
        ),
        (_header(VCEK_GUID, 72, 4) + _header(VCEK_GUID, 76, 4) + bytes(24) + bytes(8), "duplicate"),
        (bytes(16) + struct.pack("<II", 24, 4) + bytes(24), "zero GUID"),
        (_header(VCEK_GUID, 0xFFFFFFFF, 0xFFFFFFFF) + bytes(24), "exceeds"),
    ],
)
def test_cert_table_rejects(table: bytes, match: str) -> None:
    with pytest.raises(QuoteError, match=match):
        parse_cert_table(table)


def test_cert_table_caps() -> None:
    with pytest.raises(QuoteError, match="exceeds"):
        parse_cert_table(bytes(MAX_CERT_TABLE_SIZE + 1))
    many = b"".join(_header(uuid.UUID(int=i + 1), 0, 0) for i in range(40)) + bytes(24)
    with pytest.raises(QuoteError, match="more than 32"):
        parse_cert_table(many)


# -- fuzzing: only certmgr errors, whatever the bytes --------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=SNP_REPORT_SIZE, max_size=SNP_REPORT_SIZE))
def test_fuzz_report_random(raw: bytes) -> None:
    with contextlib.suppress(CertmgrError):
        parse_snp(raw)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, SNP_REPORT_SIZE - 1), st.integers(0, 255)), min_size=1, max_size=8
    ),
    st.sampled_from([None, *SnpProduct]),
)
def test_fuzz_report_mutations(edits: list[tuple[int, int]], product: SnpProduct | None) -> None:
    raw = bytearray(dstack_report())
    for pos, value in edits:
        raw[pos] = value
    try:
        r = parse_snp(bytes(raw), product=product)
    except CertmgrError:
        return
    assert r.raw == bytes(raw)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=4096))
def test_fuzz_report_any_length(raw: bytes) -> None:
    with pytest.raises(QuoteError):
        parse_snp(raw if len(raw) != SNP_REPORT_SIZE else raw[:-1])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_cert_table_random(table: bytes) -> None:
    try:
        entries = parse_cert_table(table)
    except CertmgrError:
        return
    for e in entries:
        assert e.data and e.guid.int != 0


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([VCEK_GUID, ASK_GUID, ARK_GUID, uuid.UUID(int=0), uuid.UUID(int=5)]),
            st.integers(0, 400),
            st.integers(0, 400),
        ),
        max_size=6,
    ),
    st.integers(0, 600),
    st.booleans(),
)
def test_fuzz_cert_table_headers(
    headers: list[tuple[uuid.UUID, int, int]], body: int, terminate: bool
) -> None:
    table = b"".join(_header(g, o, n) for g, o, n in headers)
    table += (
        (bytes(24) if terminate else b"") + bytes(range(256)) * (body // 256) + bytes(body % 256)
    )
    try:
        entries = parse_cert_table(table)
    except CertmgrError:
        return
    assert len(entries) <= len(headers)
    assert all(e.data and e.guid.int != 0 for e in entries)
    assert len({e.guid for e in entries}) == len(entries)


# -- a synthetic report through the dispatching parser -----------------------------------


def _synthetic_report(policy: int = 0x30000, version: int = 3) -> bytes:
    r = bytearray(SNP_REPORT_SIZE)
    struct.pack_into("<IIQ", r, 0, version, 1, policy)
    r[0x50:0x90] = b"\x11" * 64
    r[0x90:0xC0] = b"\x22" * 48
    r[0xC0:0xE0] = b"\x33" * 32
    return bytes(r)


def test_synthetic_report() -> None:
    q = parse_evidence(_synthetic_report())
    assert q.tee is TeeType.SEV_SNP
    assert q.report_data == b"\x11" * 64
    assert q.measurement.measurement == b"\x22" * 48
    assert q.measurement.host_data == b"\x33" * 32
    assert not q.measurement.debug
    assert parse_snp_report(_synthetic_report(policy=0x30000 | 1 << 19)).measurement.debug
    with pytest.raises(QuoteError, match="version"):
        parse_snp_report(_synthetic_report(version=1))
    with pytest.raises(QuoteError, match="1184"):
        parse_snp_report(_synthetic_report()[:-1])
