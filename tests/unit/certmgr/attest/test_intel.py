"""certmgr.attest.intel: Intel DCAP quotes (TDX v4 and v5, SGX v3) parsed as
dcap-qvl parses them, and malformed quotes rejected with bounded errors."""

from __future__ import annotations

import struct

import dcap_qvl  # type: ignore[import-untyped]
import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import TeeType
from certmgr.errors import QuoteError
from tests.helpers.attest import vector


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
