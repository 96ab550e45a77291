"""certmgr.attest.sevsnp: SEV-SNP attestation reports: fields, the debug policy bit,
version and size checks."""

from __future__ import annotations

import struct

import pytest

from certmgr.attest.measurement import TeeType
from certmgr.attest.quote import parse_evidence
from certmgr.attest.sevsnp import SNP_REPORT_SIZE, parse_snp_report
from certmgr.errors import QuoteError


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
