"""AMD SEV-SNP attestation reports and certificate tables, parsed strictly.

Pure: no I/O, no signature check (that is :mod:`certmgr.attest.snp_verify`). Anything
malformed raises :class:`~certmgr.errors.QuoteError` and nothing else.

Formats followed:

- "SEV Secure Nested Paging Firmware ABI Specification" (AMD #56860), Table 23
  ATTESTATION_REPORT (1184 bytes; version 2; version 3 adds CPUID_FAM_ID / CPUID_MOD_ID /
  CPUID_STEP at 0x188..0x18A; version 5 adds LAUNCH_MIT_VECTOR at 0x1F8 and
  CURRENT_MIT_VECTOR at 0x200). Version 4 is read with the version 3 layout: its reserved
  bytes must then be zero, so a field we do not know fails closed. Section 4.6
  GUEST_POLICY; Tables 3 and 4 TCB_VERSION (Turin, with FMC, and Milan/Genoa); Table 24
  ECDSA P-384 signature (r and s little-endian in 72-byte fields). The same facts are in
  google/go-sev-guest ``abi/abi.go`` and ``kds/kds.go``, and virtee/sev
  ``src/firmware/guest/types/snp.rs`` (which picks the Turin TCB layout from
  CPUID_FAM_ID >= 0x1A).
- "SEV-ES Guest-Hypervisor Communication Block Standardization" (AMD #56421), section
  4.1.8.1 MSG_REPORT_REQ extended request: the certificate table, entries
  ``{GUID (16 bytes), u32 offset, u32 length}`` ended by an all-zero entry, offsets from
  the start of the table (what configfs-tsm exposes as ``auxblob``).
"""

from __future__ import annotations

import enum
import itertools
import struct
import uuid
from dataclasses import dataclass

from certmgr.attest.measurement import Measurement, ParsedQuote, TeeType
from certmgr.errors import QuoteError

__all__ = [
    "ARK_GUID",
    "ASK_GUID",
    "MAX_CERT_TABLE_ENTRIES",
    "MAX_CERT_TABLE_SIZE",
    "SIGNATURE_ALGO_ECDSA_P384_SHA384",
    "SIGNATURE_OFFSET",
    "SNP_REPORT_SIZE",
    "VCEK_GUID",
    "VLEK_GUID",
    "CertTableEntry",
    "GuestPolicy",
    "PlatformInfo",
    "SigningKey",
    "SnpProduct",
    "SnpReport",
    "TcbVersion",
    "build_cert_table",
    "parse_cert_table",
    "parse_snp",
    "parse_snp_report",
    "product_from_cpuid",
]

SNP_REPORT_SIZE = 1184
SIGNATURE_OFFSET = 0x2A0
"""The signature covers bytes 0x000..0x29F (#56860 Table 23)."""
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1
_RS_FIELD = 72  # r and s each take 72 bytes, little-endian; P-384 uses the low 48
_RS_SIZE = 48

# GUEST_POLICY (#56860 section 4.6, Table 9).
_POLICY_SMT = 1 << 16
_POLICY_RESERVED_ONE = 1 << 17
_POLICY_MIGRATE_MA = 1 << 18
_POLICY_DEBUG = 1 << 19
_POLICY_SINGLE_SOCKET = 1 << 20
_POLICY_CXL_ALLOW = 1 << 21
_POLICY_MEM_AES_256_XTS = 1 << 22
_POLICY_RAPL_DIS = 1 << 23
_POLICY_CIPHERTEXT_HIDING = 1 << 24
_POLICY_PAGE_SWAP_DISABLE = 1 << 25
_POLICY_MBZ = ~((1 << 26) - 1) & 0xFFFF_FFFF_FFFF_FFFF  # bits 63:26

# CPUID family of Zen 5 (Turin) and later: TCB_VERSION has the Turin layout (Table 3).
_TURIN_FAMILY = 0x1A


class SnpProduct(enum.StrEnum):
    """AMD EPYC product lines with SEV-SNP, spelled as the KDS spells them (#57230)."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"


def product_from_cpuid(family: int, model: int) -> SnpProduct | None:
    """The product of a report's CPUID_FAM_ID / CPUID_MOD_ID, or None when not known.

    Family 19h model 01h is Milan, 19h model 11h Genoa, 1Ah model 02h Turin (go-sev-guest
    ``abi.SevProductFromCpuid1Eax``; KDS specification #57230 "Determining the Product
    Name"). Other models (e.g. Bergamo, Siena) return None: the chain decides then.
    """
    if family == 0x19 and model == 0x01:
        return SnpProduct.MILAN
    if family == 0x19 and model == 0x11:
        return SnpProduct.GENOA
    if family == 0x1A and model == 0x02:
        return SnpProduct.TURIN
    return None


class SigningKey(enum.IntEnum):
    """SIGNING_KEY (report bits 0x48[4:2]): which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """A TCB_VERSION, decoded with the layout of its product.

    Milan and Genoa (#56860 Table 4): BOOT_LOADER bits 7:0, TEE 15:8, reserved 47:16, SNP
    55:48, MICROCODE 63:56. Turin (Table 3): FMC 7:0, BOOT_LOADER 15:8, TEE 23:16, SNP
    31:24, reserved 55:32, MICROCODE 63:56. ``fmc`` is None for the Milan/Genoa layout.
    """

    raw: int
    turin: bool
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None

    @classmethod
    def decode(cls, raw: int, *, turin: bool) -> TcbVersion:
        b = raw.to_bytes(8, "little")
        if turin:
            return cls(raw, True, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, False, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7])

    @property
    def reserved(self) -> tuple[int, ...]:
        """The reserved SPL bytes (KDS spl_4..spl_7; Turin has no spl_4)."""
        b = self.raw.to_bytes(8, "little")
        return tuple(b[4:7]) if self.turin else tuple(b[2:6])

    def components(self) -> dict[str, int]:
        """The named SPLs, KDS query names first (``fmcSPL`` only on Turin)."""
        out = {} if self.fmc is None else {"fmcSPL": self.fmc}
        out.update(blSPL=self.bootloader, teeSPL=self.tee, snpSPL=self.snp, ucodeSPL=self.microcode)
        return out

    def at_least(self, other: TcbVersion) -> bool:
        """Every component of self is >= the same component of ``other`` (same layout)."""
        if self.turin != other.turin:
            raise QuoteError("TCB versions of different layouts (Turin vs Milan/Genoa)")
        mine, theirs = self.components(), other.components()
        return all(mine[k] >= theirs[k] for k in theirs)

    def __str__(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.components().items())


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """GUEST_POLICY (#56860 section 4.6): what the guest owner allowed at launch."""

    raw: int
    abi_minor: int
    abi_major: int
    smt_allowed: bool
    migrate_ma_allowed: bool
    debug_allowed: bool
    single_socket: bool
    cxl_allowed: bool
    mem_aes_256_xts: bool
    rapl_disabled: bool
    ciphertext_hiding: bool
    page_swap_disabled: bool

    @classmethod
    def decode(cls, raw: int) -> GuestPolicy:
        if not raw & _POLICY_RESERVED_ONE:
            raise QuoteError(f"guest policy 0x{raw:x}: bit 17 is reserved and must be one")
        if raw & _POLICY_MBZ:
            raise QuoteError(f"guest policy 0x{raw:x}: reserved bits 63:26 must be zero")
        return cls(
            raw=raw,
            abi_minor=raw & 0xFF,
            abi_major=(raw >> 8) & 0xFF,
            smt_allowed=bool(raw & _POLICY_SMT),
            migrate_ma_allowed=bool(raw & _POLICY_MIGRATE_MA),
            debug_allowed=bool(raw & _POLICY_DEBUG),
            single_socket=bool(raw & _POLICY_SINGLE_SOCKET),
            cxl_allowed=bool(raw & _POLICY_CXL_ALLOW),
            mem_aes_256_xts=bool(raw & _POLICY_MEM_AES_256_XTS),
            rapl_disabled=bool(raw & _POLICY_RAPL_DIS),
            ciphertext_hiding=bool(raw & _POLICY_CIPHERTEXT_HIDING),
            page_swap_disabled=bool(raw & _POLICY_PAGE_SWAP_DISABLE),
        )


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """PLATFORM_INFO (#56860 Table 23, offset 0x40): the host's state when signing.

    Bits above 5 are kept in ``raw`` and not refused: firmware adds bits here (go-sev-guest
    ``ParseSnpPlatformInfo`` knows 0..5), and none of them weakens the guest.
    """

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool

    @classmethod
    def decode(cls, raw: int) -> PlatformInfo:
        return cls(
            raw=raw,
            smt_enabled=bool(raw & 1),
            tsme_enabled=bool(raw & 2),
            ecc_enabled=bool(raw & 4),
            rapl_disabled=bool(raw & 8),
            ciphertext_hiding_enabled=bool(raw & 16),
            alias_check_complete=bool(raw & 32),
        )


@dataclass(frozen=True, slots=True)
class SnpReport:
    """Every field of an ATTESTATION_REPORT (#56860 Table 23), decoded.

    ``cpuid_*`` are None before version 3, the mitigation vectors None before version 5.
    ``signature_r``/``signature_s`` are the integers of the little-endian r and s fields.
    The TCB values use the Turin layout when ``turin_tcb`` (see :func:`parse_snp`).
    """

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: int
    signature_s: int
    turin_tcb: bool

    @property
    def signed(self) -> bytes:
        """The bytes the signature covers: 0x000..0x29F."""
        return self.raw[:SIGNATURE_OFFSET]

    @property
    def product(self) -> SnpProduct | None:
        """The product named by the CPUID fields (version 3 and later), if known."""
        if self.cpuid_family is None or self.cpuid_model is None:
            return None
        return product_from_cpuid(self.cpuid_family, self.cpuid_model)

    @property
    def chip_id_masked(self) -> bool:
        """CHIP_ID is all zero when the host set MASK_CHIP_ID (#56860 SNP_CONFIG)."""
        return not any(self.chip_id)


def _mbz(raw: bytes, lo: int, hi: int, what: str) -> None:
    if any(raw[lo:hi]):
        raise QuoteError(f"SEV-SNP report: reserved {what} 0x{lo:03x}..0x{hi - 1:03x} not zero")


def parse_snp(raw: bytes, *, product: SnpProduct | None = None) -> SnpReport:
    """Parse an ATTESTATION_REPORT of exactly 1184 bytes, versions 2 to 5, strictly.

    The TCB_VERSION layout is Turin's when ``product`` is Turin, or, without ``product``,
    when the report (version 3 and later) names CPUID family 1Ah or later; Milan/Genoa's
    otherwise. A version 2 report names no CPU: the verifier passes the product its
    certificate chain names. A ``product`` contradicting the report's CPUID is refused.

    Checked: the size, the version, every reserved field is zero (0x04C, 0x188/0x18B..0x19F,
    0x1EB, 0x1EF, 0x1F8/0x208..0x29F, and with SIGNATURE_ALGO 1 the signature past r and s,
    and the high 24 bytes of the r and s fields), GUEST_POLICY bit 17 is one and bits 63:26
    are zero, SIGNING_KEY is 0, 1 or 7 and the other key-info bits 31:5 are zero. The
    SIGNATURE_ALGO value itself is checked by the verifier (it is not a layout matter).
    """
    if len(raw) != SNP_REPORT_SIZE:
        raise QuoteError(f"SEV-SNP report must be {SNP_REPORT_SIZE} bytes, got {len(raw)}")
    raw = bytes(raw)
    version, guest_svn, policy_raw = struct.unpack_from("<IIQ", raw, 0)
    if not 2 <= version <= 5:
        raise QuoteError(f"unsupported SEV-SNP report version {version}")
    policy = GuestPolicy.decode(policy_raw)
    vmpl, sig_algo = struct.unpack_from("<II", raw, 0x30)
    (key_info,) = struct.unpack_from("<I", raw, 0x48)
    if key_info >> 5:
        raise QuoteError(f"SEV-SNP report: key info 0x{key_info:x} has reserved bits 31:5 set")
    try:
        signing_key = SigningKey((key_info >> 2) & 7)
    except ValueError:
        raise QuoteError(f"SEV-SNP report: SIGNING_KEY {(key_info >> 2) & 7} is reserved") from None
    _mbz(raw, 0x4C, 0x50, "field")

    family: int | None = None
    model: int | None = None
    stepping: int | None = None
    if version >= 3:
        family, model, stepping = raw[0x188], raw[0x189], raw[0x18A]
        _mbz(raw, 0x18B, 0x1A0, "field")
    else:
        _mbz(raw, 0x188, 0x1A0, "field")
    _mbz(raw, 0x1EB, 0x1EC, "byte")
    _mbz(raw, 0x1EF, 0x1F0, "byte")
    launch_mit: int | None = None
    current_mit: int | None = None
    if version >= 5:
        launch_mit, current_mit = struct.unpack_from("<QQ", raw, 0x1F8)
        _mbz(raw, 0x208, SIGNATURE_OFFSET, "field")
    else:
        _mbz(raw, 0x1F8, SIGNATURE_OFFSET, "field")
    r_field = raw[SIGNATURE_OFFSET : SIGNATURE_OFFSET + _RS_FIELD]
    s_field = raw[SIGNATURE_OFFSET + _RS_FIELD : SIGNATURE_OFFSET + 2 * _RS_FIELD]
    if sig_algo == SIGNATURE_ALGO_ECDSA_P384_SHA384:
        _mbz(raw, SIGNATURE_OFFSET + 2 * _RS_FIELD, SNP_REPORT_SIZE, "signature tail")
        if any(r_field[_RS_SIZE:]) or any(s_field[_RS_SIZE:]):
            raise QuoteError("SEV-SNP report: signature r or s exceeds 48 bytes")

    cpu_product = (
        product_from_cpuid(family, model) if family is not None and model is not None else None
    )
    if product is not None and cpu_product is not None and product is not cpu_product:
        raise QuoteError(f"SEV-SNP report CPUID names {cpu_product}, not {product}")
    if product is not None:
        turin = product is SnpProduct.TURIN
    else:
        turin = family is not None and family >= _TURIN_FAMILY

    def tcb(offset: int) -> TcbVersion:
        (value,) = struct.unpack_from("<Q", raw, offset)
        return TcbVersion.decode(value, turin=turin)

    return SnpReport(
        raw=raw,
        version=version,
        guest_svn=guest_svn,
        policy=policy,
        family_id=raw[0x10:0x20],
        image_id=raw[0x20:0x30],
        vmpl=vmpl,
        signature_algo=sig_algo,
        current_tcb=tcb(0x38),
        platform_info=PlatformInfo.decode(struct.unpack_from("<Q", raw, 0x40)[0]),
        author_key_en=bool(key_info & 1),
        mask_chip_key=bool(key_info & 2),
        signing_key=signing_key,
        report_data=raw[0x50:0x90],
        measurement=raw[0x90:0xC0],
        host_data=raw[0xC0:0xE0],
        id_key_digest=raw[0xE0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=tcb(0x180),
        cpuid_family=family,
        cpuid_model=model,
        cpuid_stepping=stepping,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=tcb(0x1E0),
        current_build=raw[0x1E8],
        current_minor=raw[0x1E9],
        current_major=raw[0x1EA],
        committed_build=raw[0x1EC],
        committed_minor=raw[0x1ED],
        committed_major=raw[0x1EE],
        launch_tcb=tcb(0x1F0),
        launch_mit_vector=launch_mit,
        current_mit_vector=current_mit,
        signature_r=int.from_bytes(r_field, "little"),
        signature_s=int.from_bytes(s_field, "little"),
        turin_tcb=turin,
    )


def parse_snp_report(raw: bytes) -> ParsedQuote:
    """Parse a SEV-SNP ATTESTATION_REPORT (see :func:`parse_snp`) into a ParsedQuote."""
    r = parse_snp(raw)
    m = Measurement(
        tee=TeeType.SEV_SNP,
        # GUEST_POLICY bit 19: DEBUG allowed (the hypervisor may debug the guest).
        debug=r.policy.debug_allowed,
        measurement=r.measurement,
        host_data=r.host_data,
    )
    return ParsedQuote(
        raw=r.raw,
        tee=TeeType.SEV_SNP,
        version=r.version,
        measurement=m,
        report_data=r.report_data,
        signed=r.signed,
        signature=r.raw[SIGNATURE_OFFSET:],
    )


# -- the certificate table of an extended report (GHCB #56421 section 4.1.8.1) ------------

VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")  # the ASK, or the ASVK
ARK_GUID = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")

MAX_CERT_TABLE_SIZE = 64 * 1024
"""Largest certificate table accepted (four DER certificates take about 6 KB)."""
MAX_CERT_TABLE_ENTRIES = 32
_ENTRY = struct.Struct("<16sII")


@dataclass(frozen=True, slots=True)
class CertTableEntry:
    """One certificate table entry: its GUID (RFC 4122 byte order, as go-sev-guest and
    virtee/sev write it) and the bytes it points to."""

    guid: uuid.UUID
    data: bytes


def parse_cert_table(
    data: bytes, *, max_size: int = MAX_CERT_TABLE_SIZE, max_entries: int = MAX_CERT_TABLE_ENTRIES
) -> tuple[CertTableEntry, ...]:
    """Parse a certificate table strictly; an empty input is an empty table.

    Refused: input over ``max_size`` (checked first); no all-zero terminator entry within
    the input or within ``max_entries``; an entry with a zero GUID but a non-zero offset or
    length; a duplicate GUID; a zero length; an offset inside the entry headers; a range past
    the end of the input; two ranges that overlap. Bytes after the last range (page padding)
    are allowed and ignored.
    """
    if len(data) > max_size:
        raise QuoteError(f"certificate table of {len(data)} bytes exceeds {max_size}")
    data = bytes(data)
    if not data:
        return ()
    headers: list[tuple[uuid.UUID, int, int]] = []
    pos = 0
    while True:
        if pos + _ENTRY.size > len(data):
            raise QuoteError("certificate table: truncated, no all-zero terminator entry")
        raw_guid, offset, length = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if raw_guid == bytes(16):
            if offset or length:
                raise QuoteError("certificate table: zero GUID with a non-zero offset/length")
            break
        if len(headers) == max_entries:
            raise QuoteError(f"certificate table: more than {max_entries} entries")
        headers.append((uuid.UUID(bytes=raw_guid), offset, length))
    header_end = pos
    seen: set[uuid.UUID] = set()
    ranges: list[tuple[int, int, uuid.UUID]] = []
    for guid, offset, length in headers:
        if guid in seen:
            raise QuoteError(f"certificate table: duplicate entry {guid}")
        seen.add(guid)
        if length == 0:
            raise QuoteError(f"certificate table: entry {guid} is empty")
        if offset < header_end:
            raise QuoteError(f"certificate table: entry {guid} points into the table headers")
        if offset + length > len(data):
            raise QuoteError(
                f"certificate table: entry {guid} range {offset}+{length} "
                f"exceeds the {len(data)} bytes given"
            )
        ranges.append((offset, offset + length, guid))
    ranges.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(ranges):
        if start < end:
            raise QuoteError(f"certificate table: entries {a} and {b} overlap")
    return tuple(
        CertTableEntry(guid, data[offset : offset + length]) for guid, offset, length in headers
    )


def build_cert_table(entries: list[CertTableEntry] | tuple[CertTableEntry, ...]) -> bytes:
    """The table for ``entries``: headers, the all-zero terminator, then the data in order
    (the layout go-sev-guest ``CertTable.Marshal`` and the Linux kernel produce)."""
    offset = _ENTRY.size * (len(entries) + 1)
    head, body = bytearray(), bytearray()
    for e in entries:
        head += _ENTRY.pack(e.guid.bytes, offset, len(e.data))
        body += e.data
        offset += len(e.data)
    return bytes(head + bytes(_ENTRY.size) + body)
