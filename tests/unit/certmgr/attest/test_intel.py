"""certmgr.quote: parsing real and synthetic quotes, the measurement id, bounded errors."""

from __future__ import annotations

import contextlib
import hashlib
import struct

import dcap_qvl  # type: ignore[import-untyped]
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import Measurement, TeeType, measurement_id
from certmgr.attest.quote import parse_evidence
from certmgr.attest.sevsnp import SNP_REPORT_SIZE, parse_snp_report
from certmgr.attest.simulated import build_simulated_quote
from certmgr.errors import QuoteError
from tests.unit.certmgr.attest_helpers import DEV_KEY, vector


@pytest.mark.parametrize("name", ["tdx_quote", "tdx_quote_outdated"])
def test_tdx_vectors_match_dcap_qvl(name: str) -> None:
    raw = vector(name)
    q = parse_quote(raw)
    ref = dcap_qvl.parse_quote(raw).report
    assert q.tee is TeeType.TDX
    assert q.version == (4 if name == "tdx_quote" else 5)
    m = q.measurement
    assert m.mr_td == bytes(ref.mr_td)
    assert [m.rt_mr0, m.rt_mr1, m.rt_mr2, m.rt_mr3] == [
        bytes(ref.rt_mr0),
        bytes(ref.rt_mr1),
        bytes(ref.rt_mr2),
        bytes(ref.rt_mr3),
    ]
    assert m.mr_config_id == bytes(ref.mr_config_id)
    assert q.report_data == bytes(ref.report_data)
    assert m.debug is bool(bytes(ref.td_attributes)[0] & 1)


def test_sgx_v3_vector_matches_dcap_qvl() -> None:
    raw = vector("sgx_quote")
    q = parse_quote(raw)
    ref = dcap_qvl.parse_quote(raw).report
    assert (q.tee, q.version) == (TeeType.SGX, 3)
    assert q.measurement.mr_enclave == bytes(ref.mr_enclave)
    assert q.measurement.mr_signer == bytes(ref.mr_signer)
    assert q.report_data == bytes(ref.report_data)
    assert q.cert_data_type == 5  # PCK certificate chain


def test_measurement_id_definition_tdx() -> None:
    m = parse_quote(vector("tdx_quote")).measurement
    expected = hashlib.sha256(
        b"teeproxy/measurement-id/v1\x00tdx\x00"
        + m.mr_td
        + m.rt_mr0
        + m.rt_mr1
        + m.rt_mr2
        + m.rt_mr3
        + m.mr_config_id
    ).digest()
    assert measurement_id(m) == expected
    assert len(expected) == 32


def test_measurement_id_separates_tee_types_and_fields() -> None:
    sgx = Measurement(TeeType.SGX, False, mr_enclave=b"\x01" * 32, mr_signer=b"\x02" * 32)
    other_prod = Measurement(
        TeeType.SGX, False, mr_enclave=b"\x01" * 32, mr_signer=b"\x02" * 32, isv_prod_id=1
    )
    svn_only = Measurement(
        TeeType.SGX, False, mr_enclave=b"\x01" * 32, mr_signer=b"\x02" * 32, isv_svn=9
    )
    assert measurement_id(sgx) != measurement_id(other_prod)
    assert measurement_id(sgx) == measurement_id(svn_only)  # ISVSVN is not part of the id
    snp = Measurement(TeeType.SEV_SNP, False, measurement=b"\x01" * 48, host_data=b"\x02" * 32)
    assert measurement_id(snp) != measurement_id(sgx)
    with pytest.raises(QuoteError):
        measurement_id(Measurement(TeeType.TDX, False, mr_td=b"short"))


def test_rtmr3_changes_the_id() -> None:
    a = parse_quote(build_simulated_quote(DEV_KEY, bytes(64)))
    b = parse_quote(
        build_simulated_quote(DEV_KEY, bytes(64), rtmrs=(bytes(48),) * 3 + (b"\x01" * 48,))
    )
    assert measurement_id(a.measurement) != measurement_id(b.measurement)


def test_simulated_quote_has_tdx_v4_layout() -> None:
    rd = bytes(range(64))
    q = parse_quote(build_simulated_quote(DEV_KEY, rd, debug=True))
    assert (q.tee, q.version, q.report_data) == (TeeType.TDX, 4, rd)
    assert q.simulated
    assert q.measurement.debug
    assert len(q.signed) == 48 + 584


def _snp_report(policy: int = 0x30000, version: int = 3) -> bytes:
    r = bytearray(SNP_REPORT_SIZE)
    struct.pack_into("<IIQ", r, 0, version, 1, policy)
    r[0x50:0x90] = b"\x11" * 64
    r[0x90:0xC0] = b"\x22" * 48
    r[0xC0:0xE0] = b"\x33" * 32
    return bytes(r)


def test_snp_report() -> None:
    q = parse_evidence(_snp_report())
    assert q.tee is TeeType.SEV_SNP
    assert q.report_data == b"\x11" * 64
    assert q.measurement.measurement == b"\x22" * 48
    assert q.measurement.host_data == b"\x33" * 32
    assert not q.measurement.debug
    assert parse_snp_report(_snp_report(policy=0x30000 | 1 << 19)).measurement.debug
    with pytest.raises(QuoteError, match="version"):
        parse_snp_report(_snp_report(version=1))
    with pytest.raises(QuoteError, match="1184"):
        parse_snp_report(_snp_report()[:-1])


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda b: b[:100], "truncated"),
        (lambda b: b[:-1] if b[-1] else b[:-71], "truncated"),
        (lambda b: b + b"\x01", "trailing"),
        (lambda b: b"\x07\x00" + b[2:], "version"),
        (lambda b: b[:2] + b"\x03\x00" + b[4:], "key type"),
        (lambda b: b[:4] + struct.pack("<I", 0x42) + b[8:], "TEE type"),
        (lambda b: b"\x03\x00" + b[2:], "v3"),
    ],
)
def test_malformed_quotes_raise_quote_error(mutate: object, match: str) -> None:
    raw = vector("tdx_quote")
    with pytest.raises(QuoteError, match=match):
        parse_quote(mutate(raw))  # type: ignore[operator]


def test_oversized_quote_rejected_before_parsing() -> None:
    with pytest.raises(QuoteError, match="too large"):
        parse_quote(b"\x04\x00\x02\x00" + bytes(70_000))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(QuoteError):
        parse_evidence(data)


_SEEDS = [vector("tdx_quote"), vector("sgx_quote"), vector("tdx_quote_outdated")]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 5005), st.integers(0, 255)), max_size=8),
    st.integers(0, 5006),
)
def test_fuzz_mutated_vectors(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(seed)
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    try:
        q = parse_evidence(bytes(b[:cut]))
    except QuoteError:
        return
    assert len(q.report_data) == 64
    measurement_id(q.measurement)
