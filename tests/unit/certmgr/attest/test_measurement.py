"""certmgr.attest.measurement: the measurement id, its definition and the fields
it covers."""

from __future__ import annotations

import hashlib

import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import Measurement, TeeType, measurement_id
from certmgr.attest.simulated import build_simulated_quote
from certmgr.errors import QuoteError
from tests.helpers.attest import DEV_KEY, vector


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


def test_measurement_id_definition_nitro() -> None:
    p0, p1, p2, p8 = (bytes([i]) * 48 for i in (1, 2, 3, 8))
    m = Measurement(TeeType.NITRO, False, pcr0=p0, pcr1=p1, pcr2=p2, pcr8=p8)
    expected = hashlib.sha256(
        b"teeproxy/measurement-id/v1\x00nitro\x00"
        + p0
        + p1
        + p2
        + b"\x01"
        + p8
        + b"\x00"
        + bytes(48)
    ).digest()
    assert measurement_id(m) == expected
    assert m.registers() == {"pcr0": p0.hex(), "pcr1": p1.hex(), "pcr2": p2.hex(), "pcr8": p8.hex()}
    # An absent PCR16 and an all-zero one are different builds; so is PCR8's absence.
    zero16 = Measurement(TeeType.NITRO, False, pcr0=p0, pcr1=p1, pcr2=p2, pcr8=p8, pcr16=bytes(48))
    no8 = Measurement(TeeType.NITRO, False, pcr0=p0, pcr1=p1, pcr2=p2)
    assert len({measurement_id(x) for x in (m, zero16, no8)}) == 3
    with pytest.raises(QuoteError, match="nitro"):
        measurement_id(Measurement(TeeType.NITRO, False, pcr0=p0, pcr1=p1, pcr2=bytes(32)))
    with pytest.raises(QuoteError, match="nitro"):
        measurement_id(Measurement(TeeType.NITRO, False, pcr0=p0, pcr1=p1, pcr2=p2, pcr8=bytes(32)))
