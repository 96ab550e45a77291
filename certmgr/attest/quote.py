"""One entry point for TEE evidence bytes: an Intel quote or a SEV-SNP report.

Pure: dispatches on the bytes to :mod:`certmgr.attest.intel` or
:mod:`certmgr.attest.sevsnp` and returns their :class:`ParsedQuote`.
"""

from __future__ import annotations

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import ParsedQuote
from certmgr.attest.sevsnp import SNP_REPORT_SIZE, parse_snp_report

__all__ = ["is_snp_report", "parse_evidence"]


def is_snp_report(raw: bytes) -> bool:
    """Whether these bytes are (shaped as) a SEV-SNP report rather than an Intel quote.

    Intel quotes carry attestation key type 2 at offset 2; an SNP report's u32 version has
    zero there, and a report is exactly 1184 bytes.
    """
    return len(raw) == SNP_REPORT_SIZE and raw[2:4] == b"\x00\x00"


def parse_evidence(raw: bytes) -> ParsedQuote:
    """Parse an Intel quote, or a SEV-SNP report when the bytes have exactly its size."""
    if is_snp_report(raw):
        return parse_snp_report(raw)
    return parse_quote(raw)
