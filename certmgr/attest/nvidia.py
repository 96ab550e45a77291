"""NVIDIA GPU and NVSwitch evidence: SPDM measurement reports and NVIDIA's JSON shape (pure).

Each confidential-computing GPU (Hopper, Blackwell) and NVSwitch (LS10) answers a DMTF SPDM
1.1 GET_MEASUREMENTS request (DSP0274 1.1.0 sections 10.11 and 10.11.1) signed by its
device key. NVML (``nvmlDeviceGetConfComputeGpuAttestationReport``) returns the request it
sent followed by the response, which is what NVIDIA's tools call the "attestation report":

request (37 bytes)::

    0  SPDMVersion 0x11   1  RequestResponseCode 0xE0 (GET_MEASUREMENTS)
    2  Param1 (bit 0: signature requested)   3  Param2 0xFF (all measurements)
    4  Nonce (32)         36 SlotIDParam (bits 3:0)

response::

    0  SPDMVersion 0x11   1  RequestResponseCode 0x60 (MEASUREMENTS)
    2  Param1             3  Param2
    4  NumberOfBlocks     5  MeasurementRecordLength (3, little-endian) = L1
    8  MeasurementRecord (L1)   8+L1 Nonce (32, the responder's)
    40+L1 OpaqueLength (2, LE) = L2   42+L1 OpaqueData (L2)   42+L1+L2 Signature (96)

A measurement block is Index (1), MeasurementSpecification (1, bit 0 = DMTF), MeasurementSize
(2, LE) and a DMTF measurement: value type (1), value size (2, LE), value. Opaque data is a
sequence of NVIDIA fields ``type (2, LE) | size (2, LE) | data`` (the field numbers below
follow NVIDIA's verifiers in NVIDIA/nvtrust ``guest_tools``). The signature is ECDSA P-384,
``r || s`` big-endian, over SHA-384 of ``request || response`` without the signature: SPDM
1.1's L1/L2 transcript of one GET_MEASUREMENTS exchange.

Parsing is strict: the exact lengths above, at most :data:`MAX_REPORT_SIZE` bytes (NVML's
buffer), version 1.1 only (SPDM 1.2 signs a different transcript: refused, not misread), at
least one block, unique block indices, the DMTF specification bit, each opaque field inside
the opaque data with no duplicates; unknown opaque fields are kept raw.

NVIDIA's tools (``nvattest``, the PPCIe verifier, Tinfoil's shim) serialize evidence as a JSON
list, one object per device::

    [{"arch": "HOPPER", "certificate": "<base64 of the PEM chain, leaf first>",
      "evidence": "<base64 of request || response>", "nonce": "<hex>", ...}, ...]

:func:`parse_nvidia_evidence_json` reads it (size capped before decoding) and
:func:`encode_nvidia_evidence` writes it. :func:`gpu_nonce` is how the proxy binds GPU
evidence to the same claims as its CPU quote (docs/ATTESTATION.md, section "NVIDIA GPUs").
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from certmgr.errors import EvidenceError, QuoteError

__all__ = [
    "GPU_NONCE_DOMAIN",
    "MAX_CHAIN_SIZE",
    "MAX_DEVICES",
    "MAX_EVIDENCE_JSON",
    "MAX_REPORT_SIZE",
    "NONCE_SIZE",
    "SIGNATURE_SIZE",
    "DeviceEvidence",
    "DeviceKind",
    "GpuArch",
    "Opaque",
    "SpdmReport",
    "describe_nvattest_result",
    "device_kind",
    "encode_nvidia_evidence",
    "format_vbios_version",
    "gpu_nonce",
    "looks_like_nvidia_evidence",
    "parse_nvidia_evidence",
    "parse_nvidia_evidence_json",
    "parse_spdm_report",
    "split_devices",
]

MAX_REPORT_SIZE: Final = 0x2000
"""NVML's attestationReport buffer (``NVML_CC_GPU_ATTESTATION_REPORT_SIZE``)."""
MAX_CHAIN_SIZE: Final = 0x1400
"""NVML's attestationCertChain buffer (``NVML_GPU_ATTESTATION_CERT_CHAIN_SIZE``), PEM text."""
MAX_DEVICES: Final = 64
"""Most devices in one evidence list (an HGX board has 8 GPUs and 4 NVSwitches)."""
MAX_EVIDENCE_JSON: Final = 1024 * 1024
"""Largest JSON evidence list read (64 devices of base64 report and chain fit)."""
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 96  # ECDSA P-384 r || s
REQUEST_SIZE: Final = 37
GPU_NONCE_DOMAIN: Final = b"teeproxy/gpu-nonce/v1"

_SPDM_1_1 = 0x11
_GET_MEASUREMENTS = 0xE0
_MEASUREMENTS = 0x60
_ALL_MEASUREMENTS = 0xFF
_DMTF_SPEC = 0x01


class GpuArch(enum.StrEnum):
    """The device families NVIDIA's tools name in ``arch``."""

    HOPPER = "HOPPER"
    BLACKWELL = "BLACKWELL"
    LS10 = "LS10"  # NVSwitch of HGX H100 boards


class DeviceKind(enum.StrEnum):
    GPU = "gpu"
    SWITCH = "switch"


def device_kind(arch: GpuArch) -> DeviceKind:
    return DeviceKind.SWITCH if arch is GpuArch.LS10 else DeviceKind.GPU


class Opaque(enum.IntEnum):
    """NVIDIA's opaque-data field numbers (the ones read here; others are kept raw)."""

    DRIVER_VERSION = 3
    VBIOS_VERSION = 6
    NVDEC0_STATUS = 11
    MSRSCNT = 12
    BOARD_ID = 14
    CHIP_SKU = 15
    CHIP_SKU_MOD = 16
    PROJECT = 17
    PROJECT_SKU = 18
    PROJECT_SKU_MOD = 19
    FWID = 20
    PROTECTED_PCIE_STATUS = 21
    # 22: a GPU's NVSwitch PDIs (one 8-byte entry per NVLink, little-endian), or an
    # NVSwitch's own PDI (8 bytes, as sent); 26: an NVSwitch's GPU PDIs then port ids.
    PDI = 22
    SWITCH_GPU_PDIS = 26
    FEATURE_FLAG = 36


NVDEC0_DISABLED = 0x55


def _le(b: bytes) -> int:
    return int.from_bytes(b, "little")


def _ascii(value: bytes, what: str) -> str:
    text = value.split(b"\0", 1)[0]
    if value[len(text) :].strip(b"\0"):
        raise QuoteError(f"SPDM opaque {what}: bytes after the terminating NUL")
    try:
        out = text.decode("ascii")
    except UnicodeDecodeError:
        raise QuoteError(f"SPDM opaque {what} is not ASCII") from None
    if not out.isprintable():
        raise QuoteError(f"SPDM opaque {what} is not printable")
    return out


def format_vbios_version(value: bytes) -> str:
    """The VBIOS version of an 8-byte opaque field as NVIDIA prints it (``96.00.9f.00.01``).

    The field holds two little-endian 32-bit words: the version is the low word's four
    bytes, most significant first, then the low byte of the high word (NVIDIA's
    ``format_vbios_version``: ``00 9f 00 96 01 00 00 00`` is 96.00.9f.00.01).
    """
    if len(value) != 8:
        raise QuoteError(f"VBIOS version field of {len(value)} bytes, expected 8")
    digits = value[:4][::-1] + value[4:5]
    return ".".join(f"{b:02x}" for b in digits)


@dataclass(frozen=True, slots=True)
class SpdmReport:
    """One parsed GET_MEASUREMENTS request || response.

    ``measurements`` maps the SPDM block index (1-based) to the measurement value;
    ``opaque`` maps NVIDIA field numbers to raw bytes. ``signed`` is what the signature
    covers; ``signature`` the 96-byte r || s.
    """

    raw: bytes
    request_nonce: bytes
    response_nonce: bytes
    slot: int
    param1: int
    param2: int
    measurements: Mapping[int, bytes]
    measurement_types: Mapping[int, int]
    opaque: Mapping[int, bytes]
    signed: bytes
    signature: bytes

    def text(self, field_id: int) -> str | None:
        v = self.opaque.get(field_id)
        return None if v is None else _ascii(v, Opaque(field_id).name.lower())

    @property
    def driver_version(self) -> str | None:
        return self.text(Opaque.DRIVER_VERSION)

    @property
    def vbios_version(self) -> str | None:
        v = self.opaque.get(Opaque.VBIOS_VERSION)
        if v is None:
            return None
        return format_vbios_version(v) if len(v) == 8 else _ascii(v, "vbios_version").lower()

    @property
    def fwid(self) -> bytes | None:
        return self.opaque.get(Opaque.FWID)

    @property
    def nvdec0_disabled(self) -> bool:
        return self.opaque.get(Opaque.NVDEC0_STATUS) == bytes([NVDEC0_DISABLED])

    def pdis(self) -> tuple[bytes, ...]:
        """Field 22 split into 8-byte entries (a GPU's link PDIs or a switch's own PDI)."""
        v = self.opaque.get(Opaque.PDI, b"")
        return tuple(v[i : i + 8] for i in range(0, len(v), 8))

    def switch_gpu_pdis(self) -> tuple[bytes, ...]:
        """An NVSwitch's field 26: the first eight 8-byte entries are GPU PDIs."""
        v = self.opaque.get(Opaque.SWITCH_GPU_PDIS, b"")
        return tuple(v[i : i + 8] for i in range(0, min(len(v), 64), 8))

    def summary(self) -> dict[str, Any]:
        return {
            "nonce": self.request_nonce.hex(),
            "slot": self.slot,
            "measurement_blocks": len(self.measurements),
            "driver_version": self.driver_version,
            "vbios_version": self.vbios_version,
            "fwid": self.fwid.hex() if self.fwid is not None else None,
            "project": self.text(Opaque.PROJECT),
            "project_sku": self.text(Opaque.PROJECT_SKU),
            "chip_sku": self.text(Opaque.CHIP_SKU),
            "nvdec0_disabled": self.nvdec0_disabled,
            "opaque_fields": sorted(self.opaque),
        }


def parse_spdm_report(data: bytes) -> SpdmReport:
    """Parse request || response strictly (module docstring); :class:`QuoteError` if not."""
    n = len(data)
    if n > MAX_REPORT_SIZE:
        raise QuoteError(f"SPDM report of {n} bytes exceeds {MAX_REPORT_SIZE}")
    if n < REQUEST_SIZE + 8 + NONCE_SIZE + 2 + SIGNATURE_SIZE:
        raise QuoteError(f"SPDM report of {n} bytes is too short")
    req = data[:REQUEST_SIZE]
    if req[0] != _SPDM_1_1:
        raise QuoteError(f"SPDM request version 0x{req[0]:02x}, only 1.1 (0x11) is supported")
    if req[1] != _GET_MEASUREMENTS:
        raise QuoteError(f"SPDM request code 0x{req[1]:02x} is not GET_MEASUREMENTS (0xe0)")
    if not req[2] & 0x01:
        raise QuoteError("SPDM request does not ask for a signature")
    if req[3] != _ALL_MEASUREMENTS:
        raise QuoteError(f"SPDM request Param2 0x{req[3]:02x} does not ask for all measurements")
    if req[36] & 0xF0:
        raise QuoteError(f"SPDM request SlotIDParam 0x{req[36]:02x} has reserved bits set")
    resp = data[REQUEST_SIZE:]
    if resp[0] != _SPDM_1_1:
        raise QuoteError(f"SPDM response version 0x{resp[0]:02x} differs from the request's")
    if resp[1] != _MEASUREMENTS:
        raise QuoteError(f"SPDM response code 0x{resp[1]:02x} is not MEASUREMENTS (0x60)")
    blocks = resp[4]
    rec_len = _le(resp[5:8])
    off = 8
    if off + rec_len + NONCE_SIZE + 2 > len(resp):
        raise QuoteError("SPDM measurement record runs past the report")
    record = resp[off : off + rec_len]
    off += rec_len
    resp_nonce = resp[off : off + NONCE_SIZE]
    off += NONCE_SIZE
    opaque_len = _le(resp[off : off + 2])
    off += 2
    if off + opaque_len + SIGNATURE_SIZE != len(resp):
        raise QuoteError(
            f"SPDM response of {len(resp)} bytes does not end with a {SIGNATURE_SIZE}-byte "
            "signature after its opaque data"
        )
    opaque_raw = resp[off : off + opaque_len]
    values, types = _parse_record(record, blocks)
    opaque = _parse_opaque(opaque_raw)
    _check_opaque(opaque)
    return SpdmReport(
        raw=bytes(data),
        request_nonce=bytes(req[4:36]),
        response_nonce=bytes(resp_nonce),
        slot=req[36] & 0x0F,
        param1=resp[2],
        param2=resp[3],
        measurements=MappingProxyType(values),
        measurement_types=MappingProxyType(types),
        opaque=MappingProxyType(opaque),
        signed=bytes(data[:-SIGNATURE_SIZE]),
        signature=bytes(data[-SIGNATURE_SIZE:]),
    )


def _parse_record(record: bytes, count: int) -> tuple[dict[int, bytes], dict[int, int]]:
    if count == 0:
        raise QuoteError("SPDM response has no measurement blocks")
    values: dict[int, bytes] = {}
    types: dict[int, int] = {}
    off = 0
    for _ in range(count):
        if off + 4 > len(record):
            raise QuoteError("SPDM measurement record ends inside a block header")
        index, spec, size = record[off], record[off + 1], _le(record[off + 2 : off + 4])
        off += 4
        if index in (0, 0xFF) or index in values:
            raise QuoteError(f"SPDM measurement block index {index} is reserved or repeated")
        if spec != _DMTF_SPEC:
            raise QuoteError(f"SPDM measurement block {index} is not in the DMTF format")
        if size < 3 or off + size > len(record):
            raise QuoteError(f"SPDM measurement block {index} runs past the record")
        m = record[off : off + size]
        off += size
        if _le(m[1:3]) != size - 3:
            raise QuoteError(f"SPDM measurement block {index}: value size disagrees")
        types[index] = m[0]
        values[index] = bytes(m[3:])
    if off != len(record):
        raise QuoteError("SPDM measurement record has bytes after its last block")
    return values, types


def _parse_opaque(raw: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off < len(raw):
        if off + 4 > len(raw):
            raise QuoteError("SPDM opaque data ends inside a field header")
        kind, size = _le(raw[off : off + 2]), _le(raw[off + 2 : off + 4])
        off += 4
        if off + size > len(raw):
            raise QuoteError(f"SPDM opaque field {kind} runs past the opaque data")
        if kind in out:
            raise QuoteError(f"SPDM opaque field {kind} appears twice")
        out[kind] = bytes(raw[off : off + size])
        off += size
    return out


_TEXT_FIELDS = (
    Opaque.DRIVER_VERSION,
    Opaque.CHIP_SKU,
    Opaque.CHIP_SKU_MOD,
    Opaque.PROJECT,
    Opaque.PROJECT_SKU,
    Opaque.PROJECT_SKU_MOD,
)


def _check_opaque(opaque: Mapping[int, bytes]) -> None:
    """The fields this module reads have their form, so its accessors never fail later."""
    for f in _TEXT_FIELDS:
        if f in opaque:
            _ascii(opaque[f], f.name.lower())
    vbios = opaque.get(Opaque.VBIOS_VERSION)
    if vbios is not None and len(vbios) != 8:
        _ascii(vbios, "vbios_version")
    sizes = {Opaque.FWID: 48, Opaque.NVDEC0_STATUS: 1}
    for f, size in sizes.items():
        if f in opaque and len(opaque[f]) != size:
            raise QuoteError(f"SPDM opaque {f.name.lower()} of {len(opaque[f])} bytes")
    if len(opaque.get(Opaque.PDI, b"")) % 8:
        raise QuoteError("SPDM opaque PDI field is not a list of 8-byte PDIs")
    if Opaque.SWITCH_GPU_PDIS in opaque and len(opaque[Opaque.SWITCH_GPU_PDIS]) < 64:
        raise QuoteError("SPDM opaque switch GPU PDI field is shorter than 8 PDIs")


@dataclass(frozen=True, slots=True)
class DeviceEvidence:
    """One device's evidence as NVIDIA's tools serialize it. ``chain_pem`` is the PEM text
    of the attestation chain (leaf first); ``nonce`` what the collector says it asked for
    (the report's own request nonce is what counts)."""

    arch: GpuArch
    report: bytes
    chain_pem: bytes
    nonce: bytes | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> DeviceKind:
        return device_kind(self.arch)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "arch": self.arch.value,
            "certificate": base64.b64encode(self.chain_pem).decode(),
            "evidence": base64.b64encode(self.report).decode(),
            "nonce": self.nonce.hex() if self.nonce is not None else None,
        }
        out.update({k: v for k, v in self.extra.items() if k not in out})
        return out


def _b64(item: Mapping[str, Any], key: str, cap: int, where: str) -> bytes:
    v = item.get(key)
    if not isinstance(v, str):
        raise EvidenceError(f"{where}: {key!r} must be a base64 string")
    if len(v) > (cap * 4) // 3 + 4:
        raise EvidenceError(f"{where}: {key!r} is longer than {cap} bytes")
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError) as e:
        raise EvidenceError(f"{where}: {key!r} is not base64") from e


_EXTRA_KEYS = ("driver_version", "vbios_version", "version", "uuid", "cc_mode", "devtools")


def parse_nvidia_evidence(items: Any) -> tuple[DeviceEvidence, ...]:
    """The decoded JSON list (see the module docstring); :class:`EvidenceError` if not."""
    if not isinstance(items, list) or not items:
        raise EvidenceError("NVIDIA evidence must be a non-empty JSON list")
    if len(items) > MAX_DEVICES:
        raise EvidenceError(f"NVIDIA evidence lists more than {MAX_DEVICES} devices")
    out = []
    for i, item in enumerate(items):
        where = f"NVIDIA evidence [{i}]"
        if not isinstance(item, dict):
            raise EvidenceError(f"{where} is not an object")
        arch_text = item.get("arch")
        try:
            arch = GpuArch(str(arch_text))
        except ValueError:
            raise EvidenceError(f"{where}: unknown arch {str(arch_text)[:32]!r}") from None
        report = _b64(item, "evidence", MAX_REPORT_SIZE, where)
        chain = _b64(item, "certificate", MAX_CHAIN_SIZE, where)
        nonce_text = item.get("nonce")
        nonce = None
        if nonce_text is not None:
            if not isinstance(nonce_text, str) or len(nonce_text) != 2 * NONCE_SIZE:
                raise EvidenceError(f"{where}: 'nonce' must be {NONCE_SIZE} bytes in hex")
            try:
                nonce = bytes.fromhex(nonce_text)
            except ValueError:
                raise EvidenceError(f"{where}: 'nonce' is not hex") from None
        extra = {k: item[k] for k in _EXTRA_KEYS if isinstance(item.get(k), str | bool | int)}
        out.append(DeviceEvidence(arch, report, chain, nonce, MappingProxyType(extra)))
    return tuple(out)


def parse_nvidia_evidence_json(data: bytes) -> tuple[DeviceEvidence, ...]:
    """NVIDIA's JSON evidence list from bytes (size capped before decoding)."""
    if len(data) > MAX_EVIDENCE_JSON:
        raise EvidenceError(f"NVIDIA evidence of {len(data)} bytes exceeds {MAX_EVIDENCE_JSON}")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise EvidenceError(f"NVIDIA evidence is not JSON: {e}") from e
    return parse_nvidia_evidence(doc)


def encode_nvidia_evidence(items: Iterable[DeviceEvidence]) -> list[dict[str, Any]]:
    return [e.to_json() for e in items]


def looks_like_nvidia_evidence(data: bytes) -> bool:
    """Whether ``data`` is meant as NVIDIA's JSON list (a cheap sniff before parsing)."""
    head = data[:64].lstrip()
    return head.startswith(b"[") and b'"' in data[:4096] and b'"evidence"' in data[:65536]


def gpu_nonce(claims_bytes: bytes) -> bytes:
    """The SPDM nonce the proxy asks its GPUs for: ``SHA-256("teeproxy/gpu-nonce/v1" ||
    claims)``, where ``claims`` is the exact CBOR claims buffer whose SHA-256 the CPU quote's
    report_data holds. So both attestations name the same nonce, TLS key and signing
    address, and a verifier recomputes it from the claims it already checked."""
    return hashlib.sha256(GPU_NONCE_DOMAIN + claims_bytes).digest()


def split_devices(
    items: Sequence[DeviceEvidence],
) -> tuple[tuple[DeviceEvidence, ...], tuple[DeviceEvidence, ...]]:
    """(GPUs, NVSwitches) in list order."""
    gpus = tuple(e for e in items if e.kind is DeviceKind.GPU)
    switches = tuple(e for e in items if e.kind is DeviceKind.SWITCH)
    return gpus, switches


_RESULT_FIELDS = (
    "x-nvidia-device-type",
    "eat_nonce",
    "hwmodel",
    "x-nvidia-gpu-driver-version",
    "x-nvidia-gpu-vbios-version",
    "measres",
    "secboot",
    "dbgstat",
)


def describe_nvattest_result(data: bytes) -> dict[str, Any] | None:
    """A summary of an NVIDIA attestation *result* (``nvattest`` / NRAS claims with a
    detached EAT), or None when ``data`` is not one. Such a file is not evidence: it is
    what a verifier concluded, and its EAT may be unsigned (``alg`` ``none``); it is read to
    say so, never to trust it."""
    if len(data) > MAX_EVIDENCE_JSON or not data.lstrip().startswith(b"{"):
        return None
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("claims"), list):
        return None
    devices = [c for c in doc["claims"][:MAX_DEVICES] if isinstance(c, dict)]
    if not devices or not any("x-nvidia-gpu-claims-version" in c for c in devices):
        return None
    alg = None
    eat = doc.get("detached_eat")
    if isinstance(eat, list) and eat and isinstance(eat[0], list) and len(eat[0]) == 2:
        token = eat[0][1]
        if isinstance(token, str) and "." in token:
            head = token.split(".", 1)[0][:512]
            try:
                alg = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))).get("alg")
            except (ValueError, binascii.Error, AttributeError):
                alg = None
    return {
        "result_code": doc.get("result_code") if isinstance(doc.get("result_code"), int) else None,
        "eat_alg": str(alg)[:16] if alg is not None else None,
        "claims_version": str(devices[0].get("x-nvidia-gpu-claims-version"))[:16],
        "devices": [
            {k: c[k] for k in _RESULT_FIELDS if isinstance(c.get(k), str | bool | int)}
            for c in devices
        ],
    }
