"""One entry point for TEE evidence bytes: an Intel quote, a SEV-SNP report or a Nitro document.

Pure: dispatches on the bytes to :mod:`certmgr.attest.intel`, :mod:`certmgr.attest.sevsnp`
or :mod:`certmgr.attest.nitro` and returns their :class:`ParsedQuote`.
"""

from __future__ import annotations

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import ParsedQuote
from certmgr.attest.nitro import looks_like_cose_sign1, parse_nitro_quote
from certmgr.attest.sevsnp import SNP_REPORT_SIZE, parse_snp_report

__all__ = ["is_snp_report", "parse_evidence"]


def is_snp_report(raw: bytes) -> bool:
    """Whether these bytes are (shaped as) a SEV-SNP report rather than an Intel quote.

    Intel quotes carry attestation key type 2 at offset 2; an SNP report's u32 version has
    zero there, and a report is exactly 1184 bytes.
    """
    return len(raw) == SNP_REPORT_SIZE and raw[2:4] == b"\x00\x00"


def parse_evidence(raw: bytes) -> ParsedQuote:
    """Parse an Intel quote, a SEV-SNP report when the bytes have exactly its size, or an
    AWS Nitro attestation document (COSE_Sign1) when they start like one."""
    if looks_like_cose_sign1(raw):
        return parse_nitro_quote(raw)
    if is_snp_report(raw):
        return parse_snp_report(raw)
    return parse_quote(raw)
