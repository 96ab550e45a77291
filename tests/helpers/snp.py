"""SEV-SNP test material: the real vectors, byte-level report edits, a loopback AMD KDS.

Edits keep a report parseable but break its signature (it covers bytes 0x000..0x29F), so a
test asserts that its own reason is among the failures.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from certmgr.attest.cmw import TsmReport
from certmgr.attest.cmw import encode_extension as encode_cmw
from certmgr.attest.sevsnp import (
    ARK_GUID,
    ASK_GUID,
    SNP_REPORT_SIZE,
    VCEK_GUID,
    CertTableEntry,
    build_cert_table,
)
from certmgr.attest.snp_verify import SnpCollateral, load_certificates

DATA = Path(__file__).resolve().parents[1] / "data" / "sev-snp"

# go-sev-guest verify/testdata: VCEK valid 2022-09-24 .. 2029-09-24.
T_GOSEV = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
# dstack: VCEK valid 2026-06-17 .. 2033-06-17.
T_DSTACK = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)

GOSEV_MEASUREMENT = bytes.fromhex(
    "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b"
    "6bdf8a9ece31a5a608eb0cf2e4872b01"
)
GOSEV_CHIP_PREFIX = bytes.fromhex("3ac3fe21")
GOSEV_CHIP_SUFFIX = bytes.fromhex("8b006b5d")
DSTACK_MEASUREMENT = bytes.fromhex(
    "7f51e17f72a04d5422cb2c00998166536019a217376f3aa45a630e59c805a599"
    "847ff250dbffcd07e1ba639771d6f05d"
)
DSTACK_HOST_DATA = bytes.fromhex("783f0057820acb99249af56cc3b07b4e8d80f65183167cba9cf437bb680f742f")
DSTACK_CHIP_PREFIX = bytes.fromhex("38d17458")
DSTACK_CHIP_SUFFIX = bytes.fromhex("6bb877")


def data(name: str) -> bytes:
    return (DATA / name).read_bytes()


def gosev_report() -> bytes:
    return data("attestation.bin")


def dstack_report() -> bytes:
    return data("dstack_sev_snp_report_raw.bin")


def certs(name: str) -> tuple[bytes, ...]:
    return load_certificates(data(name))


def gosev_collateral() -> SnpCollateral:
    """The go-sev-guest VCEK with its Milan ASK and ARK, all given."""
    return SnpCollateral.from_certificates(
        certs("vcek.testcer") + certs("ask_ark_milan.pem"), source="test"
    )


def dstack_collateral() -> SnpCollateral:
    """dstack's VCEK and ASK, go-sev-guest's Milan ARK."""
    ark = certs("ask_ark_milan.pem")[1]
    return SnpCollateral.from_certificates(
        certs("dstack_sev_snp_vcek.pem") + certs("dstack_sev_snp_ask.pem") + (ark,), source="test"
    )


def cert_table(vcek: bytes, ask: bytes, ark: bytes, *, pad_to: int = 0) -> bytes:
    """A GHCB certificate table (what configfs-tsm's ``auxblob`` holds) of these DER
    certificates, zero-padded to ``pad_to`` bytes as the kernel's page-sized buffer is."""
    table = build_cert_table(
        [
            CertTableEntry(VCEK_GUID, vcek),
            CertTableEntry(ASK_GUID, ask),
            CertTableEntry(ARK_GUID, ark),
        ]
    )
    return table.ljust(pad_to, b"\x00")


def gosev_cert_table(*, pad_to: int = 0) -> bytes:
    """The real go-sev-guest VCEK with the real Milan ASK and ARK, as a certificate table."""
    ask, ark = certs("ask_ark_milan.pem")
    return cert_table(certs("vcek.testcer")[0], ask, ark, pad_to=pad_to)


def dstack_cert_table(*, pad_to: int = 0) -> bytes:
    """dstack's real VCEK and ASK with the real Milan ARK, as a certificate table."""
    return cert_table(
        certs("dstack_sev_snp_vcek.pem")[0],
        certs("dstack_sev_snp_ask.pem")[0],
        certs("ask_ark_milan.pem")[1],
        pad_to=pad_to,
    )


def snp_cmw(report: bytes, table: bytes = b"") -> bytes:
    """The id-pe-cmw value teeproxy puts in an SEV-SNP certificate (RFC 9999 CMW record of a
    TSM report: the report and, when given, its certificate table)."""
    return encode_cmw(TsmReport("sev_guest", report, table))


def edit(raw: bytes, offset: int, value: bytes) -> bytes:
    out = bytearray(raw)
    out[offset : offset + len(value)] = value
    assert len(out) == SNP_REPORT_SIZE
    return bytes(out)


def with_policy(raw: bytes, policy: int) -> bytes:
    return edit(raw, 0x08, struct.pack("<Q", policy))


def with_key_info(raw: bytes, key_info: int) -> bytes:
    return edit(raw, 0x48, struct.pack("<I", key_info))


def synthetic_report(
    *,
    version: int = 3,
    family: int = 0x19,
    model: int = 0x01,
    stepping: int = 0,
    reported_tcb: int = 0,
    chip_id: bytes = b"\x5a" * 64,
    policy: int = 0x30000,
) -> bytes:
    """A parseable, unsigned-garbage report (SIGNATURE_ALGO 1, zero signature)."""
    r = bytearray(SNP_REPORT_SIZE)
    struct.pack_into("<IIQ", r, 0, version, 0, policy)
    struct.pack_into("<II", r, 0x30, 0, 1)
    for off in (0x38, 0x180, 0x1E0, 0x1F0):
        struct.pack_into("<Q", r, off, reported_tcb)
    if version >= 3:
        r[0x188:0x18B] = bytes((family, model, stepping))
    r[0x1A0:0x1E0] = chip_id
    return bytes(r)


# -- a loopback AMD KDS ---------------------------------------------------------------------


@dataclass
class FakeKds:
    """Speaks KDS's URL format (#57230 section 4) and serves the real go-sev-guest VCEK and
    the Milan chain; counts every request. ``status`` forces an HTTP status (e.g. 429)."""

    base_url: str = ""
    requests: list[str] = field(default_factory=list)
    status: int = 200
    oversize: bool = False
    vceks: dict[tuple[str, str, str], bytes] = field(default_factory=dict)
    chains: dict[str, bytes] = field(default_factory=dict)

    async def vcek(self, request: web.Request) -> web.Response:
        self.requests.append(str(request.rel_url))
        if self.status != 200:
            return web.Response(status=self.status, headers={"Retry-After": "7"})
        product, hwid = request.match_info["product"], request.match_info["hwid"]
        args = "&".join(f"{k}={v}" for k, v in request.query.items())
        body = self.vceks.get((product, hwid, args))
        if body is None:
            return web.Response(status=404, text="no such VCEK")
        if self.oversize:
            body = body + bytes(128 * 1024)
        return web.Response(body=body, content_type="application/octet-stream")

    async def chain(self, request: web.Request) -> web.Response:
        self.requests.append(str(request.rel_url))
        if self.status != 200:
            return web.Response(status=self.status)
        body = self.chains.get(request.match_info["product"])
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/x-pem-file")


def gosev_kds() -> FakeKds:
    """KDS knowing the go-sev-guest chip at blSPL=2 teeSPL=0 snpSPL=5 ucodeSPL=68."""
    report = gosev_report()
    kds = FakeKds()
    kds.vceks[("Milan", report[0x1A0:0x1E0].hex(), "blSPL=2&teeSPL=0&snpSPL=5&ucodeSPL=68")] = data(
        "vcek.testcer"
    )
    kds.chains["Milan"] = data("ask_ark_milan.pem")
    return kds


@asynccontextmanager
async def serve_kds(kds: FakeKds) -> AsyncIterator[FakeKds]:
    """Run ``kds`` on 127.0.0.1 (ephemeral port) until the block ends."""
    app = web.Application()
    app.router.add_get("/vcek/v1/{product}/cert_chain", kds.chain)
    app.router.add_get("/vcek/v1/{product}/{hwid}", kds.vcek)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        kds.base_url = f"http://127.0.0.1:{port}"
        yield kds
    finally:
        await runner.cleanup()


# -- endorsement keys of our own (never chain to AMD: they exercise the other checks) -------


def _der_int(n: int) -> bytes:
    body = n.to_bytes(1, "big") if n < 0x80 else b"\x00" + n.to_bytes(1, "big")
    return b"\x02" + bytes([len(body)]) + body


def fake_vek(
    *,
    kind: str = "VCEK",
    product: str = "Milan",
    spl: dict[str, int] | None = None,
    hwid: bytes | None = None,
    csp_id: str | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A VCEK/VLEK-shaped certificate with AMD's KDS extensions, self-issued under the name
    of AMD's ASK (``SEV-<product>``) or ASVK (``SEV-VLEK-<product>``), and its P-384 key."""
    key = ec.generate_private_key(ec.SECP384R1())
    signer = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer_cn = f"SEV-{product}" if kind == "VCEK" else f"SEV-VLEK-{product}"
    spl = spl or {}
    oids = {"blSPL": 1, "teeSPL": 2, "snpSPL": 3, "spl4": 4, "spl5": 5, "spl6": 6, "spl7": 7}
    oids |= {"ucodeSPL": 8, "fmcSPL": 9}
    when = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"SEV-{kind}")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(when)
        .not_valid_after(when + dt.timedelta(days=20 * 365))
    )

    def ext(oid: str, value: bytes) -> None:
        nonlocal b
        ob = x509.ObjectIdentifier(oid)
        b = b.add_extension(x509.UnrecognizedExtension(ob, value), critical=False)

    ext("1.3.6.1.4.1.3704.1.1", _der_int(0))
    name = product + ("-B0" if kind == "VCEK" else "")
    ext("1.3.6.1.4.1.3704.1.2", b"\x16" + bytes([len(name)]) + name.encode())
    for k, v in spl.items():
        ext(f"1.3.6.1.4.1.3704.1.3.{oids[k]}", _der_int(v))
    if hwid is not None:
        ext("1.3.6.1.4.1.3704.1.4", hwid)
    if csp_id is not None:
        ext("1.3.6.1.4.1.3704.1.5", b"\x16" + bytes([len(csp_id)]) + csp_id.encode())
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    cert = b.sign(signer, hashes.SHA384(), rsa_padding=pss)
    return cert.public_bytes(serialization.Encoding.DER), key


def sign_report(raw: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """``raw`` with its signature replaced by ``key``'s over bytes 0x000..0x29F (r, s LE)."""
    r, s = decode_dss_signature(key.sign(raw[:0x2A0], ec.ECDSA(hashes.SHA384())))
    sig = r.to_bytes(72, "little") + s.to_bytes(72, "little")
    return raw[:0x2A0] + sig + bytes(SNP_REPORT_SIZE - 0x2A0 - len(sig))
