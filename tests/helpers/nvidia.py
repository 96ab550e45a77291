"""NVIDIA GPU test material: the real vectors (tests/data/nvidia), byte edits, and devices,
chains, RIMs and OCSP responses of our own for what no real vector covers.

A device of our own has the exact SPDM 1.1 layout, a P-384 chain of the same shape as
NVIDIA's (leaf with a TcbInfo FWID, intermediates, root) under a test root that the tests
pass as ``GpuCollateral.device_root``; RIMs of our own are signed with signxml the way
NVIDIA signs them (enveloped, C14N 1.1, ecdsa-sha384) under a test RIM root.
"""

from __future__ import annotations

import base64
import datetime as dt
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certmgr.attest.nvidia import DeviceEvidence, GpuArch, parse_nvidia_evidence_json

DATA = Path(__file__).resolve().parents[1] / "data" / "nvidia"

# hopperAttestationReport.txt: the nonce NVIDIA's SDK tests set; device chain valid
# 2022-03-01 .. 9999; the test RIMs' signers valid 2023-06-23 .. 2025-06-22 (VBIOS) and
# 2023-06-27 .. 2025-06-26 (driver).
H100_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
T_H100 = 1735689600  # 2025-01-01
T_RIM_EXPIRED = 1767225600  # 2026-01-01: after both RIM signers expired
T_BEFORE_CHAIN = 1609459200  # 2021-01-01: before the Provisioner ICA and Identity CA
# ppcie_*: all share one nonce; pinned at the upstream commit date.
PPCIE_NONCE = bytes.fromhex("4760e30534a0621357d458b1a7936551b5dc4cd1e69718adf7ed9fb0252a537e")
T_PPCIE = 1769126400  # 2026-01-23
RIM_FILES = (
    "Driver_RIM_test_no_gpu.swidtag",
    "1010_0200_882_96005E0001_test_no_gpu.swidtag",
    "1010_0200_882_96005E0001_PROD.swidtag",
)


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def h100_report() -> bytes:
    return bytes.fromhex(data("hopperAttestationReport.txt").decode().strip())


def h100_chain() -> bytes:
    return data("hopperCertChain.txt")


def h100_evidence(**changes: object) -> DeviceEvidence:
    ev = DeviceEvidence(GpuArch.HOPPER, h100_report(), h100_chain(), H100_NONCE)
    return DeviceEvidence(**{**_fields(ev), **changes})  # type: ignore[arg-type]


def _fields(ev: DeviceEvidence) -> dict[str, object]:
    return {"arch": ev.arch, "report": ev.report, "chain_pem": ev.chain_pem, "nonce": ev.nonce}


def ppcie_gpus() -> tuple[DeviceEvidence, ...]:
    return parse_nvidia_evidence_json(data("ppcie_gpu_evidence_8xH100.json"))


def ppcie_switches() -> tuple[DeviceEvidence, ...]:
    return parse_nvidia_evidence_json(data("ppcie_switch_evidence.json"))


def rims() -> tuple[bytes, ...]:
    return tuple(data(n) for n in RIM_FILES)


def flip(raw: bytes, offset: int) -> bytes:
    b = bytearray(raw)
    b[offset] ^= 0x01
    return bytes(b)


# -- devices of our own ---------------------------------------------------------------------

NOT_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
NOT_AFTER = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
T_OWN = 1767225600  # 2026-01-01, inside every certificate of our own

_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
        ]
    )


def tcb_info(fwid: bytes) -> bytes:
    """A DiceTcbInfo ending, as NVIDIA's does, in one SHA-384 FWID (``[6] { { sha384, OCTET
    STRING } }``); the fields before it are a vendor string only."""
    digest = b"\x04\x30" + fwid
    entry = _SHA384_OID_DER + digest
    seq = b"\x30" + bytes([len(entry)]) + entry
    fwids = b"\xa6" + bytes([len(seq)]) + seq
    vendor = b"\x80\x04Test"
    body = vendor + fwids
    return b"\x30" + bytes([len(body)]) + body


@dataclass
class Ca:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def make_ca(
    cn: str,
    issuer: Ca | None = None,
    *,
    not_after: dt.datetime = NOT_AFTER,
    path_length: int | None = None,
    ocsp_signer: bool = False,
    ca: bool = True,
) -> Ca:
    key = ec.generate_private_key(ec.SECP384R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
    )
    if ca:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
    if ocsp_signer:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
        )
    signer = issuer.key if issuer else key
    return Ca(key, builder.sign(signer, hashes.SHA384()))


def make_leaf(cn: str, issuer: Ca, fwid: bytes, *, not_after: dt.datetime = NOT_AFTER) -> Ca:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(not_after)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), tcb_info(fwid)),
            critical=False,
        )
        .sign(issuer.key, hashes.SHA384())
    )
    return Ca(key, cert)


def _opaque(fields: dict[int, bytes]) -> bytes:
    return b"".join(struct.pack("<HH", k, len(v)) + v for k, v in fields.items())


def vbios_field(version: str) -> bytes:
    """The 8-byte opaque VBIOS field of ``aa.bb.cc.dd.ee`` (inverse of format_vbios_version)."""
    d = bytes.fromhex(version.replace(".", ""))
    return d[:4][::-1] + d[4:5] + b"\0\0\0"


def spdm_report(
    key: ec.EllipticCurvePrivateKey,
    nonce: bytes,
    measurements: dict[int, bytes],
    opaque: dict[int, bytes],
) -> bytes:
    """request || response with the signature of ``key`` (the module layout exactly)."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    record = b""
    for index, value in measurements.items():
        dmtf = bytes([0x01]) + struct.pack("<H", len(value)) + value
        record += bytes([index, 0x01]) + struct.pack("<H", len(dmtf)) + dmtf
    op = _opaque(opaque)
    body = (
        bytes([0x11, 0x60, 0x00, 0x00, len(measurements)])
        + len(record).to_bytes(3, "little")
        + record
        + bytes(32)
        + struct.pack("<H", len(op))
        + op
    )
    der = key.sign(request + body, ec.ECDSA(hashes.SHA384()))
    r, s = decode_dss_signature(der)
    return request + body + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


@dataclass
class OwnDevice:
    """A GPU of our own: chain root -> identity -> provisioner -> BROM -> FMC leaf."""

    root: Ca
    chain: list[Ca]  # leaf first, root last
    fwid: bytes = field(default=b"\x5a" * 48)
    driver_version: str = "550.90.07"
    vbios_version: str = "96.00.9f.00.01"

    @property
    def leaf(self) -> Ca:
        return self.chain[0]

    def measurements(self) -> dict[int, bytes]:
        return {i: bytes([i]) * 48 for i in range(1, 41)}

    def opaque(self) -> dict[int, bytes]:
        return {
            3: self.driver_version.encode() + b"\0",
            6: vbios_field(self.vbios_version),
            11: b"\xaa",
            15: b"882\0",
            17: b"1010\0",
            18: b"0200\0",
            20: self.fwid,
        }

    def evidence(self, nonce: bytes, **changes: object) -> DeviceEvidence:
        report = spdm_report(self.leaf.key, nonce, self.measurements(), self.opaque())
        chain = pem(*(c.cert for c in self.chain))
        ev = DeviceEvidence(GpuArch.HOPPER, report, chain, nonce)
        return DeviceEvidence(**{**_fields(ev), **changes})  # type: ignore[arg-type]


def own_device(*, leaf_not_after: dt.datetime = NOT_AFTER) -> OwnDevice:
    root = make_ca("Test Device Identity CA")
    identity = make_ca("Test GH100 Identity", root)
    provisioner = make_ca("Test GH100 Provisioner ICA 1", identity)
    brom = make_ca("GH100 A01 GSP BROM", provisioner)
    fwid = b"\x5a" * 48
    leaf = make_leaf("GH100 A01 GSP FMC LF", brom, fwid, not_after=leaf_not_after)
    return OwnDevice(root, [leaf, brom, provisioner, identity, root], fwid)


# -- RIMs of our own ---------------------------------------------------------------------------

_SWID_NS = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd"
_SHA384_NS = "http://www.w3.org/2001/04/xmlenc#sha384"


def rim_xml(
    version: str, measurements: dict[int, tuple[bytes, ...]], *, product: str = "GH100"
) -> str:
    """A SWID RIM document (unsigned): ``measurements`` maps 0-based index -> values."""
    rows = []
    for index, values in sorted(measurements.items()):
        hashes_attr = " ".join(f'ns2:Hash{k}="{v.hex()}"' for k, v in enumerate(values))
        rows.append(
            f'<Resource type="Measurement" index="{index}" active="True" '
            f'alternatives="{len(values)}" {hashes_attr} name="M{index}" size="48"/>'
        )
    return (
        f'<SoftwareIdentity xmlns="{_SWID_NS}" xmlns:ns2="{_SHA384_NS}" name="{product}" '
        f'tagId="test-{version}" version="1.0">'
        '<Entity name="Test" role="softwareCreator tagCreator"/>'
        f'<Meta colloquialVersion="{version}" product="{product}"/>'
        f"<Payload>{''.join(rows)}</Payload></SoftwareIdentity>"
    )


@dataclass
class RimSigner:
    root: Ca
    chain: list[Ca]  # signer first, root last

    def sign(self, xml: str) -> bytes:
        from lxml import etree
        from signxml import XMLSigner
        from signxml.algorithms import (
            CanonicalizationMethod,
            DigestAlgorithm,
            SignatureMethod,
        )

        signer = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384,
            digest_algorithm=DigestAlgorithm.SHA384,
            c14n_algorithm=CanonicalizationMethod.CANONICAL_XML_1_1,
        )
        key = self.chain[0].key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        signed = signer.sign(
            etree.fromstring(xml.encode()),
            key=key,
            cert=[c.cert.public_bytes(serialization.Encoding.PEM).decode() for c in self.chain],
        )
        return bytes(etree.tostring(signed))


def rim_signer(*, signer_not_after: dt.datetime = NOT_AFTER) -> RimSigner:
    root = make_ca("Test CoRIM signing Root CA")
    ca = make_ca("Test Reference Value GH100 CA", root)
    l3 = make_ca("Test Reference Value L3 GH100 001", ca, path_length=0)
    l4 = make_ca("Test RIM L4 Signer", l3, not_after=signer_not_after, ca=False)
    return RimSigner(root, [l4, l3, ca, root])


# -- OCSP of our own ------------------------------------------------------------------------


def ocsp_response(
    cert: x509.Certificate,
    issuer: Ca,
    *,
    status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
    this_update: dt.datetime = dt.datetime(2025, 12, 31, tzinfo=dt.UTC),
    next_update: dt.datetime | None = dt.datetime(2026, 1, 7, tzinfo=dt.UTC),
    responder: Ca | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """A DER OCSP response for ``cert``, signed by ``issuer`` or by ``responder`` (with the
    responder's certificate included, as NVIDIA's OCSP service does)."""
    signer = responder or issuer
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert,
        issuer=issuer.cert,
        algorithm=hashes.SHA384(),
        cert_status=status,
        this_update=this_update,
        next_update=next_update,
        revocation_time=this_update if status is ocsp.OCSPCertStatus.REVOKED else None,
        revocation_reason=(
            x509.ReasonFlags.key_compromise if status is ocsp.OCSPCertStatus.REVOKED else None
        ),
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer.cert)
    if responder is not None:
        builder = builder.certificates([responder.cert])
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    resp = builder.sign(signer.key, hashes.SHA384())
    return resp.public_bytes(serialization.Encoding.DER)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- a fake of NVML (pynvml's names), answering with evidence bytes ----------------------------


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeGpu:
    """One GPU: ``report_for(nonce)`` gives its SPDM bytes (the real vectors ignore the
    nonce, as a replayed report would; a device of our own signs it)."""

    report_for: object  # Callable[[bytes], bytes]
    chain_pem: bytes
    arch_code: int = 9  # NVML_DEVICE_ARCH_HOPPER


class FakeNvml:
    """The calls NvmlGpuSource makes, with NVML's struct field names and buffer sizes."""

    NVMLError = FakeNvmlError

    def __init__(
        self,
        gpus: list[FakeGpu],
        *,
        cc: int = 1,
        devtools: int = 0,
        environment: int = 2,
        driver: str = "550.90.07",
        vbios: str = "96.00.9F.00.01",
        fail: str = "",
    ) -> None:
        self.gpus = gpus
        self.cc, self.devtools, self.environment = cc, devtools, environment
        self.driver, self.vbios, self.fail = driver, vbios, fail
        self.nonces: list[bytes] = []

    def _maybe_fail(self, name: str) -> None:
        if self.fail == name:
            raise FakeNvmlError(f"{name}: Unknown Error")

    def nvmlDeviceGetCount(self) -> int:
        self._maybe_fail("count")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetArchitecture(self, h: int) -> int:
        return self.gpus[h].arch_code

    def nvmlSystemGetConfComputeState(self) -> object:
        self._maybe_fail("state")
        from types import SimpleNamespace

        return SimpleNamespace(
            environment=self.environment, ccFeature=self.cc, devToolsMode=self.devtools
        )

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlDeviceGetVbiosVersion(self, h: int) -> str:
        return self.vbios

    def nvmlDeviceGetConfComputeGpuAttestationReport(self, h: int, nonce: bytes) -> object:
        from types import SimpleNamespace

        self._maybe_fail("report")
        self.nonces.append(bytes(nonce))
        raw = self.gpus[h].report_for(bytes(nonce))  # type: ignore[operator]
        buf = list(raw) + [0] * (0x2000 - len(raw))
        return SimpleNamespace(attestationReportSize=len(raw), attestationReport=buf)

    def nvmlDeviceGetConfComputeGpuCertificate(self, h: int) -> object:
        from types import SimpleNamespace

        chain = self.gpus[h].chain_pem
        buf = list(chain) + [0] * (0x1400 - len(chain))
        return SimpleNamespace(attestationCertChainSize=len(chain), attestationCertChain=buf)


def real_h100_gpu() -> FakeGpu:
    """The real H100 vector: the same bytes whatever the nonce."""
    report = h100_report()
    return FakeGpu(lambda _nonce: report, h100_chain())


def own_gpu(dev: OwnDevice) -> FakeGpu:
    """A device of our own that signs the nonce it is asked for."""
    return FakeGpu(
        lambda nonce: spdm_report(dev.leaf.key, nonce, dev.measurements(), dev.opaque()),
        pem(*(c.cert for c in dev.chain)),
    )
