"""Intel SGX and TDX ECDSA quotes (DCAP), parsed strictly into a :class:`ParsedQuote`.

Pure functions over bytes: no I/O, no signature checking (that is
:mod:`certmgr.attest.verify`, with dcap-qvl against Intel's root). Every length is checked
before a field is read, and anything malformed raises :class:`QuoteError` and nothing else.

Layouts followed:

- Intel SGX ECDSA quote v3 and TDX quote v4: "Intel SGX ECDSA Quote Library Reference"
  (DCAP), "Intel TDX DCAP Quoting Library API" section A.3 (48-byte header, 384-byte SGX
  report body or 584-byte TD report 1.0 body, then a u32-length-prefixed signature data:
  64-byte ECDSA signature, 64-byte attestation public key, certification data).
- TDX quote v5: the same header, then ``u16 body_type | u32 body_size | body``
  (type 1: SGX report body, 2: TD report 1.0, 3: TD report 1.5 = 1.0 + TEE_TCB_SVN2 +
  MRSERVICETD, 648 bytes).
"""

from __future__ import annotations

import struct

from certmgr.attest.measurement import MAX_QUOTE_SIZE, Measurement, ParsedQuote, TeeType
from certmgr.errors import QuoteError

__all__ = [
    "ATT_KEY_ECDSA_P256",
    "HEADER_SIZE",
    "SGX_REPORT_SIZE",
    "TD10_REPORT_SIZE",
    "TD15_REPORT_SIZE",
    "TEE_TYPE_SGX",
    "TEE_TYPE_TDX",
    "parse_quote",
]

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2


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
