"""What a TEE measured, in one typed value per TEE, and the measurement id over it.

Pure: no I/O. The per-TEE parsers (:mod:`certmgr.attest.intel`, :mod:`certmgr.attest.sevsnp`)
produce a :class:`ParsedQuote`; :func:`measurement_id` is the one definition of the bytes32
the policy contract lists, documented in docs/ATTESTATION.md.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

from certmgr.errors import QuoteError, QuoteProviderError

__all__ = [
    "MAX_QUOTE_SIZE",
    "REPORT_DATA_SIZE",
    "SIMULATED_CERT_DATA_TYPE",
    "Measurement",
    "ParsedQuote",
    "TeeType",
    "check_report_data",
    "measurement_id",
]

MAX_QUOTE_SIZE = 64 * 1024
"""Largest quote accepted (real ones are about 5 KB with the PCK chain)."""

REPORT_DATA_SIZE = 64
"""Every TEE here signs exactly 64 bytes of caller data (TDX, SGX, SEV-SNP report_data)."""

SIMULATED_CERT_DATA_TYPE = 0x7E57
"""Certification-data type of quotes from the simulated provider (not an Intel type)."""

_MEASUREMENT_ID_DOMAIN = b"teeproxy/measurement-id/v1\x00"


class TeeType(enum.StrEnum):
    TDX = "tdx"
    SGX = "sgx"
    SEV_SNP = "sev-snp"
    NITRO = "nitro"


@dataclass(frozen=True, slots=True)
class Measurement:
    """What was launched, per TEE type. Fields of other TEE types are empty bytes.

    TDX: ``mr_td``, ``rt_mr0``..``rt_mr3``, ``mr_config_id`` (48 bytes each).
    SGX: ``mr_enclave``, ``mr_signer`` (32 bytes), ``isv_prod_id``, ``isv_svn``.
    SEV-SNP: ``measurement`` (48), ``host_data`` (32).
    Nitro: ``pcr0``, ``pcr1``, ``pcr2`` (48 bytes each), ``pcr8`` and ``pcr16`` (48 bytes,
    or None when the document has no such PCR).
    """

    tee: TeeType
    debug: bool
    mr_td: bytes = b""
    rt_mr0: bytes = b""
    rt_mr1: bytes = b""
    rt_mr2: bytes = b""
    rt_mr3: bytes = b""
    mr_config_id: bytes = b""
    mr_enclave: bytes = b""
    mr_signer: bytes = b""
    isv_prod_id: int = 0
    isv_svn: int = 0
    measurement: bytes = b""
    host_data: bytes = b""
    pcr0: bytes = b""
    pcr1: bytes = b""
    pcr2: bytes = b""
    pcr8: bytes | None = None
    pcr16: bytes | None = None

    def registers(self) -> dict[str, str]:
        """The registers of this TEE type under their usual names, hex encoded."""
        if self.tee is TeeType.TDX:
            return {
                "mr_td": self.mr_td.hex(),
                "rt_mr0": self.rt_mr0.hex(),
                "rt_mr1": self.rt_mr1.hex(),
                "rt_mr2": self.rt_mr2.hex(),
                "rt_mr3": self.rt_mr3.hex(),
                "mr_config_id": self.mr_config_id.hex(),
            }
        if self.tee is TeeType.SGX:
            return {
                "mr_enclave": self.mr_enclave.hex(),
                "mr_signer": self.mr_signer.hex(),
                "isv_prod_id": str(self.isv_prod_id),
                "isv_svn": str(self.isv_svn),
            }
        if self.tee is TeeType.NITRO:
            out = {"pcr0": self.pcr0.hex(), "pcr1": self.pcr1.hex(), "pcr2": self.pcr2.hex()}
            if self.pcr8 is not None:
                out["pcr8"] = self.pcr8.hex()
            if self.pcr16 is not None:
                out["pcr16"] = self.pcr16.hex()
            return out
        return {"measurement": self.measurement.hex(), "host_data": self.host_data.hex()}


@dataclass(frozen=True, slots=True)
class ParsedQuote:
    """A parsed quote or report. ``signed`` is the byte range covered by its signature."""

    raw: bytes
    tee: TeeType
    version: int
    measurement: Measurement
    report_data: bytes
    signed: bytes = b""
    signature: bytes = b""
    attestation_key: bytes = b""
    cert_data_type: int = 0
    cert_data: bytes = b""

    @property
    def simulated(self) -> bool:
        return self.cert_data_type == SIMULATED_CERT_DATA_TYPE


def measurement_id(m: Measurement) -> bytes:
    """The bytes32 identifying a build: what the policy contract lists.

    ``SHA-256(domain || tee || fields)`` where ``domain`` is
    ``b"teeproxy/measurement-id/v1\\0"``, ``tee`` is the TEE name in ASCII followed by a
    zero byte, and ``fields`` are fixed-length, in this order:

    - tdx: MRTD | RTMR0 | RTMR1 | RTMR2 | RTMR3 | MRCONFIGID (6 x 48 bytes)
    - sgx: MRENCLAVE | MRSIGNER (2 x 32) | ISVPRODID (u16 big-endian)
    - sev-snp: MEASUREMENT (48) | HOST_DATA (32)
    - nitro: PCR0 | PCR1 | PCR2 (3 x 48) | opt(PCR8) | opt(PCR16), where ``opt(x)`` is
      ``0x01 || x`` (48 bytes) when the document has that PCR and ``0x00 || 0^48`` when it
      has not, so an absent PCR and an all-zero one differ

    The debug flag is not part of it: debug TEEs are rejected outright by the verifier.
    """
    if m.tee is TeeType.TDX:
        fields = [m.mr_td, m.rt_mr0, m.rt_mr1, m.rt_mr2, m.rt_mr3, m.mr_config_id]
        sizes = [48] * 6
    elif m.tee is TeeType.SGX:
        fields = [m.mr_enclave, m.mr_signer, struct.pack(">H", m.isv_prod_id)]
        sizes = [32, 32, 2]
    elif m.tee is TeeType.NITRO:
        fields = [m.pcr0, m.pcr1, m.pcr2, *(_optional_pcr(p) for p in (m.pcr8, m.pcr16))]
        sizes = [48, 48, 48, 49, 49]
    else:
        fields = [m.measurement, m.host_data]
        sizes = [48, 32]
    for f, n in zip(fields, sizes, strict=True):
        if len(f) != n:
            raise QuoteError(f"{m.tee} measurement field has {len(f)} bytes, expected {n}")
    return hashlib.sha256(
        _MEASUREMENT_ID_DOMAIN + m.tee.value.encode() + b"\x00" + b"".join(fields)
    ).digest()


def _optional_pcr(pcr: bytes | None) -> bytes:
    return b"\x00" + bytes(48) if pcr is None else b"\x01" + pcr


def check_report_data(report_data: bytes) -> None:
    """Refuse report_data that is not exactly :data:`REPORT_DATA_SIZE` bytes."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise QuoteProviderError(f"report_data must be {REPORT_DATA_SIZE} bytes")
