"""TEE quote and report parsing into typed measurements, and the measurement id.

Pure functions over bytes: no I/O, no signature checking (that is :mod:`certmgr.verify`,
with dcap-qvl against Intel's root). Every length is checked before a field is read, and
anything malformed raises :class:`QuoteError` (a ``ValueError``) and nothing else.

Layouts followed:

- Intel SGX ECDSA quote v3 and TDX quote v4: "Intel SGX ECDSA Quote Library Reference"
  (DCAP), "Intel TDX DCAP Quoting Library API" section A.3 (48-byte header, 384-byte SGX
  report body or 584-byte TD report 1.0 body, then a u32-length-prefixed signature data:
  64-byte ECDSA signature, 64-byte attestation public key, certification data).
- TDX quote v5: the same header, then ``u16 body_type | u32 body_size | body``
  (type 1: SGX report body, 2: TD report 1.0, 3: TD report 1.5 = 1.0 + TEE_TCB_SVN2 +
  MRSERVICETD, 648 bytes).
- AMD SEV-SNP ATTESTATION_REPORT: "SEV Secure Nested Paging Firmware ABI Specification"
  (#56860) Table 22 (1184 bytes; versions 2 to 5 share the fields we read).

The measurement id (what the policy contract lists) is defined once here, in
:func:`measurement_id`, and documented in docs/ATTESTATION.md.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_QUOTE_SIZE",
    "SIMULATED_CERT_DATA_TYPE",
    "Measurement",
    "ParsedQuote",
    "QuoteError",
    "TeeType",
    "measurement_id",
    "parse_evidence",
    "parse_quote",
    "parse_snp_report",
    "self_measurement_id",
]

MAX_QUOTE_SIZE = 64 * 1024
"""Largest quote accepted (real ones are about 5 KB with the PCK chain)."""

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648
SNP_REPORT_SIZE = 1184

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2

SIMULATED_CERT_DATA_TYPE = 0x7E57
"""Certification-data type of quotes from the simulated provider (not an Intel type)."""

_MEASUREMENT_ID_DOMAIN = b"teeproxy/measurement-id/v1\x00"


class QuoteError(ValueError):
    """The bytes are not a well-formed quote or report of a supported version."""


class TeeType(enum.StrEnum):
    TDX = "tdx"
    SGX = "sgx"
    SEV_SNP = "sev-snp"


@dataclass(frozen=True, slots=True)
class Measurement:
    """What was launched, per TEE type. Fields of other TEE types are empty bytes.

    TDX: ``mr_td``, ``rt_mr0``..``rt_mr3``, ``mr_config_id`` (48 bytes each).
    SGX: ``mr_enclave``, ``mr_signer`` (32 bytes), ``isv_prod_id``, ``isv_svn``.
    SEV-SNP: ``measurement`` (48), ``host_data`` (32).
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

    The debug flag is not part of it: debug TEEs are rejected outright by the verifier.
    """
    if m.tee is TeeType.TDX:
        fields = [m.mr_td, m.rt_mr0, m.rt_mr1, m.rt_mr2, m.rt_mr3, m.mr_config_id]
        sizes = [48] * 6
    elif m.tee is TeeType.SGX:
        fields = [m.mr_enclave, m.mr_signer, struct.pack(">H", m.isv_prod_id)]
        sizes = [32, 32, 2]
    else:
        fields = [m.measurement, m.host_data]
        sizes = [48, 32]
    for f, n in zip(fields, sizes, strict=True):
        if len(f) != n:
            raise QuoteError(f"{m.tee} measurement field has {len(f)} bytes, expected {n}")
    return hashlib.sha256(
        _MEASUREMENT_ID_DOMAIN + m.tee.value.encode() + b"\x00" + b"".join(fields)
    ).digest()


# -- Intel quotes --------------------------------------------------------------------------


class _Reader:
    """Bounded reads over a byte string; every overrun is a QuoteError."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise QuoteError(f"truncated: {what} needs {n} bytes at offset {self.pos}")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        v: int = struct.unpack("<H", self.take(2, what))[0]
        return v

    def u32(self, what: str) -> int:
        v: int = struct.unpack("<I", self.take(4, what))[0]
        return v


def _td_measurement(body: bytes) -> tuple[Measurement, bytes]:
    # TD report 1.0 offsets (bytes): TEE_TCB_SVN 0, MRSEAM 16, MRSIGNERSEAM 64,
    # SEAMATTRIBUTES 112, TDATTRIBUTES 120, XFAM 128, MRTD 136, MRCONFIGID 184,
    # MROWNER 232, MROWNERCONFIG 280, RTMR0..3 328..520, REPORTDATA 520..584.
    td_attributes = body[120:128]
    rt = [body[328 + 48 * i : 376 + 48 * i] for i in range(4)]
    m = Measurement(
        tee=TeeType.TDX,
        # TDATTRIBUTES bit 0 is DEBUG (TUD.DEBUG): the host can read and write TD memory.
        debug=bool(td_attributes[0] & 0x01),
        mr_td=body[136:184],
        mr_config_id=body[184:232],
        rt_mr0=rt[0],
        rt_mr1=rt[1],
        rt_mr2=rt[2],
        rt_mr3=rt[3],
    )
    return m, body[520:584]


def _sgx_measurement(body: bytes) -> tuple[Measurement, bytes]:
    # SGX report body offsets: CPUSVN 0, MISCSELECT 16, ATTRIBUTES 48 (FLAGS u64 LE first),
    # MRENCLAVE 64, MRSIGNER 128, ISVPRODID 256, ISVSVN 258, REPORTDATA 320..384.
    flags = int.from_bytes(body[48:56], "little")
    prod, svn = struct.unpack_from("<HH", body, 256)
    m = Measurement(
        tee=TeeType.SGX,
        debug=bool(flags & 0x2),  # SGX_FLAGS_DEBUG
        mr_enclave=body[64:96],
        mr_signer=body[128:160],
        isv_prod_id=prod,
        isv_svn=svn,
    )
    return m, body[320:384]


def parse_quote(raw: bytes) -> ParsedQuote:
    """Parse an Intel SGX v3, TDX v4 or TDX v5 ECDSA quote (strict lengths, no trailing data)."""
    if not isinstance(raw, bytes | bytearray):
        raise QuoteError("quote must be bytes")
    raw = bytes(raw)
    if len(raw) > MAX_QUOTE_SIZE:
        raise QuoteError(f"quote too large ({len(raw)} > {MAX_QUOTE_SIZE} bytes)")
    r = _Reader(raw)
    header = r.take(HEADER_SIZE, "header")
    version, key_type, tee_type = struct.unpack_from("<HHI", header, 0)
    if key_type != ATT_KEY_ECDSA_P256:
        raise QuoteError(f"unsupported attestation key type {key_type}")
    if version == 3:
        if tee_type != TEE_TYPE_SGX:
            raise QuoteError(f"quote v3 with TEE type {tee_type:#x} (expected SGX)")
        body = r.take(SGX_REPORT_SIZE, "SGX report body")
        m, rd = _sgx_measurement(body)
    elif version == 4:
        if tee_type == TEE_TYPE_TDX:
            body = r.take(TD10_REPORT_SIZE, "TD report")
            m, rd = _td_measurement(body)
        elif tee_type == TEE_TYPE_SGX:
            body = r.take(SGX_REPORT_SIZE, "SGX report body")
            m, rd = _sgx_measurement(body)
        else:
            raise QuoteError(f"unknown TEE type {tee_type:#x}")
    elif version == 5:
        body_type = r.u16("body type")
        body_size = r.u32("body size")
        expected = {1: SGX_REPORT_SIZE, 2: TD10_REPORT_SIZE, 3: TD15_REPORT_SIZE}.get(body_type)
        if expected is None:
            raise QuoteError(f"unsupported quote v5 body type {body_type}")
        if body_size != expected:
            raise QuoteError(f"quote v5 body type {body_type} with size {body_size}")
        want_tee = TEE_TYPE_SGX if body_type == 1 else TEE_TYPE_TDX
        if tee_type != want_tee:
            raise QuoteError(f"quote v5 body type {body_type} with TEE type {tee_type:#x}")
        body = r.take(body_size, "report body")
        m, rd = _sgx_measurement(body) if body_type == 1 else _td_measurement(body)
    else:
        raise QuoteError(f"unsupported quote version {version}")
    signed = raw[: r.pos]
    sig_len = r.u32("signature data length")
    sig_data = r.take(sig_len, "signature data")
    # Quote buffers from the quoting library are often fixed-size and zero-padded (the
    # dcap-qvl TDX sample carries 70 zero bytes): zero padding is tolerated, data is not.
    if raw[r.pos :].strip(b"\x00"):
        raise QuoteError(f"{len(raw) - r.pos} trailing non-zero bytes after the signature data")
    s = _Reader(sig_data)
    signature = s.take(64, "ECDSA signature")
    att_key = s.take(64, "attestation key")
    if version == 3:
        # v3 puts the QE report, its signature and the QE authentication data here; v4 and
        # v5 nest them inside certification data type 6.
        s.take(SGX_REPORT_SIZE + 64, "QE report and signature")
        s.take(s.u16("QE authentication data size"), "QE authentication data")
    cert_type = s.u16("certification data type")
    cert_len = s.u32("certification data size")
    cert_data = s.take(cert_len, "certification data")
    if s.pos != len(sig_data):
        raise QuoteError("trailing bytes in the signature data")
    return ParsedQuote(
        raw=raw,
        tee=m.tee,
        version=version,
        measurement=m,
        report_data=rd,
        signed=signed,
        signature=signature,
        attestation_key=att_key,
        cert_data_type=cert_type,
        cert_data=cert_data,
    )


# -- AMD SEV-SNP ---------------------------------------------------------------------------


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


def parse_evidence(raw: bytes) -> ParsedQuote:
    """Parse an Intel quote, or a SEV-SNP report when the bytes have exactly its size."""
    # Intel quotes carry attestation key type 2 at offset 2; an SNP report's u32 version has
    # zero there.
    if len(raw) == SNP_REPORT_SIZE and raw[2:4] == b"\x00\x00":
        return parse_snp_report(raw)
    return parse_quote(raw)


def self_measurement_id() -> bytes:
    """This TEE's own measurement id, auto-detecting the quote provider (blocking I/O).

    The one function here that is not pure: a convenience for the governance self-check
    (``[governance] self_measurement = "auto"``), delegating to
    :func:`certmgr.tee.self_measurement_id`. Raises an ``OSError`` subclass when this is not
    running in a supported TEE. Call it off the event loop.
    """
    from certmgr.tee import self_measurement_id as from_provider  # noqa: PLC0415

    return from_provider("auto")
