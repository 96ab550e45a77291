"""AMD SEV-SNP attestation reports, parsed strictly into a :class:`ParsedQuote`.

Layout: "SEV Secure Nested Paging Firmware ABI Specification" (#56860) Table 22,
ATTESTATION_REPORT (1184 bytes; versions 2 to 5 share the fields read here). Pure: no I/O,
no signature check.
"""

from __future__ import annotations

import struct

from certmgr.attest.measurement import Measurement, ParsedQuote, TeeType
from certmgr.errors import QuoteError

__all__ = ["SNP_REPORT_SIZE", "parse_snp_report"]

SNP_REPORT_SIZE = 1184


def parse_snp_report(raw: bytes) -> ParsedQuote:
    """Parse a SEV-SNP ATTESTATION_REPORT (exactly 1184 bytes, versions 2 to 5)."""
    if len(raw) != SNP_REPORT_SIZE:
        raise QuoteError(f"SEV-SNP report must be {SNP_REPORT_SIZE} bytes, got {len(raw)}")
    raw = bytes(raw)
    version, _guest_svn, policy = struct.unpack_from("<IIQ", raw, 0)
    if not 2 <= version <= 5:
        raise QuoteError(f"unsupported SEV-SNP report version {version}")
    m = Measurement(
        tee=TeeType.SEV_SNP,
        # GUEST_POLICY bit 19: DEBUG allowed (the hypervisor may debug the guest).
        debug=bool(policy & (1 << 19)),
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
    )
    return ParsedQuote(
        raw=raw,
        tee=TeeType.SEV_SNP,
        version=version,
        measurement=m,
        report_data=raw[0x50:0x90],
        signed=raw[:0x2A0],
        signature=raw[0x2A0:],
    )
