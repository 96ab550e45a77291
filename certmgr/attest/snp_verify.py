"""Verification of AMD SEV-SNP attestation reports against AMD's roots.

Pure: a function of the report bytes, the endorsement certificates, an explicit policy and
the time; no I/O (certificates come from :mod:`certmgr.attest.snp_collateral`). Importable
without aiohttp.

:func:`verify_snp_report` checks, each failure with its own :class:`SnpReason`:

1. the report parses strictly (:func:`certmgr.attest.sevsnp.parse_snp`) (``malformed``);
2. the chain (``chain``, ``validity``, ``collateral-malformed``): the ARK is one of AMD's
   roots shipped in :mod:`certmgr.attest.snp_roots` (byte-identical to a pinned one; when
   none is given, the shipped root of the product is used), it is self-signed, the ASK (for
   a VCEK) or ASVK (for a VLEK; given, or the shipped one) is signed by it, the VCEK or VLEK
   by that; every signature RSASSA-PSS with SHA-384, MGF1-SHA-384 and a 48-byte salt by an
   RSA-4096 key, as AMD signs them (KDS specification #57230 section 2.1, go-sev-guest
   ``verify/verify.go``); each certificate is within its validity period at ``now``; issuer
   and subject names link; the product (Milan, Genoa, Turin) is the same in the ARK, the
   ASK/ASVK, the VCEK/VLEK's issuer and productName extension, and the report's CPUID;
3. the report signature (``signature``): SIGNATURE_ALGO is 1 (ECDSA P-384 with SHA-384),
   the key is the VCEK/VLEK's P-384 key, over bytes 0x000..0x29F, r and s little-endian
   (#56860 Table 23 and Table 24); the report says it was signed by the kind of key given
   (SIGNING_KEY: VCEK 0, VLEK 1; 7 = not signed);
4. the binding of the endorsement key to this chip and TCB (``tcb``): a VCEK's hwID
   extension is the report's CHIP_ID (64 bytes; on Turin the first 8), and the VCEK's or
   VLEK's SPL extensions (blSPL, teeSPL, snpSPL, spl_4..spl_7, ucodeSPL, and on Turin
   fmcSPL) compose exactly the report's REPORTED_TCB (#57230 Table 8; go-sev-guest
   ``kds/kds.go``). Optionally a minimum TCB per product for REPORTED, CURRENT and
   COMMITTED_TCB (``tcb`` with status ``OutOfDate``);
5. the guest policy (``policy``): DEBUG refused always; SMT and MIGRATE_MA refused unless
   :class:`SnpPolicy` allows them; optionally a minimum firmware (CURRENT and COMMITTED
   major.minor), the products and signing key kinds accepted.

Not checked: revocation (AMD's CRLs need the network; the ARK/ASK are not known to have been
revoked), VMPL, ID block / author key digests, FAMILY_ID / IMAGE_ID, the mitigation vectors:
they are in :class:`~certmgr.attest.sevsnp.SnpReport` for the caller to judge.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import hashlib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID

from certmgr.attest.sevsnp import (
    ARK_GUID,
    ASK_GUID,
    SIGNATURE_ALGO_ECDSA_P384_SHA384,
    VCEK_GUID,
    VLEK_GUID,
    SigningKey,
    SnpProduct,
    SnpReport,
    TcbVersion,
    parse_cert_table,
    parse_snp,
)
from certmgr.attest.snp_roots import (
    ARK_PEM,
    ARK_SHA256,
    ASK_PEM,
    ASK_SHA256,
    ASVK_PEM,
    ASVK_SHA256,
)
from certmgr.errors import QuoteError, VerifyError

__all__ = [
    "MAX_CERTIFICATE_INPUT",
    "AmdAnchors",
    "SnpCollateral",
    "SnpFailure",
    "SnpPolicy",
    "SnpReason",
    "SnpTcbFloor",
    "SnpVerification",
    "VekExtensions",
    "amd_anchors",
    "check_cert_chain",
    "check_vek",
    "collateral_from_cert_table",
    "load_certificates",
    "vek_extensions",
    "verify_snp_report",
]

MAX_CERTIFICATE_INPUT = 256 * 1024
"""Largest certificate input (one PEM bundle or DER) read: a chain takes about 6 KB."""

# KDS x509v3 extensions under AMD's arc 1.3.6.1.4.1.3704.1 (#57230 Table 8; go-sev-guest
# ``kds/kds.go`` OidStructVersion .. OidCspID; fmcSPL .3.9 on Turin).
_AMD_ARC = "1.3.6.1.4.1.3704.1."
_OID_STRUCT_VERSION = "1.3.6.1.4.1.3704.1.1"
_OID_PRODUCT_NAME = "1.3.6.1.4.1.3704.1.2"
_OID_SPL = {
    "blSPL": "1.3.6.1.4.1.3704.1.3.1",
    "teeSPL": "1.3.6.1.4.1.3704.1.3.2",
    "snpSPL": "1.3.6.1.4.1.3704.1.3.3",
    "spl4": "1.3.6.1.4.1.3704.1.3.4",
    "spl5": "1.3.6.1.4.1.3704.1.3.5",
    "spl6": "1.3.6.1.4.1.3704.1.3.6",
    "spl7": "1.3.6.1.4.1.3704.1.3.7",
    "ucodeSPL": "1.3.6.1.4.1.3704.1.3.8",
    "fmcSPL": "1.3.6.1.4.1.3704.1.3.9",
}
_OID_HWID = "1.3.6.1.4.1.3704.1.4"
_OID_CSP_ID = "1.3.6.1.4.1.3704.1.5"
_KNOWN_AMD_OIDS = frozenset({_OID_STRUCT_VERSION, _OID_PRODUCT_NAME, _OID_HWID, _OID_CSP_ID})
_KNOWN_AMD_OIDS |= frozenset(_OID_SPL.values())

# Byte positions of each SPL in TCB_VERSION (#56860 Tables 3 and 4).
_TCB_BYTES_MILAN_GENOA = ("blSPL", "teeSPL", "spl4", "spl5", "spl6", "spl7", "snpSPL", "ucodeSPL")
_TCB_BYTES_TURIN = ("fmcSPL", "blSPL", "teeSPL", "snpSPL", "spl5", "spl6", "spl7", "ucodeSPL")
_HWID_SIZE = {SnpProduct.MILAN: 64, SnpProduct.GENOA: 64, SnpProduct.TURIN: 8}

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
_AMD_RSA_BITS = 4096


class SnpReason(enum.StrEnum):
    """Why an SEV-SNP report is not trusted; one code per kind of check."""

    MALFORMED = "malformed"
    COLLATERAL_MISSING = "collateral-missing"
    COLLATERAL_MALFORMED = "collateral-malformed"
    CHAIN = "chain"
    VALIDITY = "validity"
    SIGNATURE = "signature"
    TCB = "tcb"
    POLICY = "policy"


@dataclass(frozen=True, slots=True)
class SnpFailure:
    """One failed check. ``check`` names it within its reason (``debug``, ``smt``,
    ``migrate-ma``, ``firmware``, ``product``, ``signing-key``, ``chip-id``,
    ``reported-tcb``, ``min-tcb``, ...), so callers can tell policy checks apart."""

    reason: SnpReason
    message: str
    check: str = ""


@dataclass(frozen=True, slots=True)
class SnpTcbFloor:
    """Minimum SPLs for one product (SPL numbers are per product; ``fmc`` counts on Turin
    only)."""

    product: SnpProduct
    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int = 0

    def __post_init__(self) -> None:
        for name in ("bootloader", "tee", "snp", "microcode", "fmc"):
            if not 0 <= getattr(self, name) <= 255:
                raise VerifyError(f"SNP TCB floor {name} must be 0..255")

    def admits(self, tcb: TcbVersion) -> bool:
        ok = (
            tcb.bootloader >= self.bootloader
            and tcb.tee >= self.tee
            and tcb.snp >= self.snp
            and tcb.microcode >= self.microcode
        )
        return ok and (tcb.fmc is None or tcb.fmc >= self.fmc)


@dataclass(frozen=True, slots=True)
class SnpPolicy:
    """What the caller accepts beyond a genuine report. Debug is never accepted.

    ``min_tcb`` holds at most one floor per product; a product without one has no floor.
    ``min_firmware`` is (major, minor) for CURRENT and COMMITTED.
    """

    allow_smt: bool = False
    allow_migration_agent: bool = False
    min_firmware: tuple[int, int] | None = None
    min_tcb: tuple[SnpTcbFloor, ...] = ()
    products: frozenset[SnpProduct] = frozenset(SnpProduct)
    signing_keys: frozenset[SigningKey] = frozenset({SigningKey.VCEK, SigningKey.VLEK})

    def __post_init__(self) -> None:
        if self.min_firmware is not None and not all(0 <= v <= 255 for v in self.min_firmware):
            raise VerifyError("SNP min_firmware must be (major, minor) in 0..255")
        if SigningKey.NONE in self.signing_keys:
            raise VerifyError("SNP policy cannot accept unsigned reports")
        if not self.products:
            raise VerifyError("SNP policy accepts no product")
        if len({f.product for f in self.min_tcb}) != len(self.min_tcb):
            raise VerifyError("SNP policy has two TCB floors for one product")

    def floor(self, product: SnpProduct) -> SnpTcbFloor | None:
        return next((f for f in self.min_tcb if f.product is product), None)


@dataclass(frozen=True, slots=True)
class SnpCollateral:
    """The endorsement certificates of one report, DER.

    ``vek`` is the VCEK or VLEK (required to verify); ``ask`` the ASK or ASVK and ``ark``
    the ARK, each optional: empty means the certificate shipped for the VCEK's product.
    """

    vek: bytes = b""
    ask: bytes = b""
    ark: bytes = b""
    source: str = ""

    @classmethod
    def from_certificates(cls, certs: Iterable[bytes], source: str = "") -> SnpCollateral:
        """Sort DER certificates into VCEK/VLEK, ASK/ASVK and ARK by their subject name
        (``SEV-VCEK``/``SEV-VLEK``, ``SEV-<product>``/``SEV-VLEK-<product>``,
        ``ARK-<product>``: #57230 section 2.1). Two of one role is refused; with both an
        ASK and an ASVK, the one for the kind of endorsement key given is kept."""
        roles: dict[str, bytes] = {}
        vlek = False
        for der in certs:
            cn = _common_name(_load_der(der))
            if cn in ("SEV-VCEK", "SEV-VLEK"):
                role, vlek = "vek", cn == "SEV-VLEK"
            elif cn.startswith("ARK-"):
                role = "ark"
            elif cn.startswith("SEV-VLEK-"):
                role = "asvk"
            elif cn.startswith("SEV-"):
                role = "ask"
            else:
                raise VerifyError(f"not an AMD SEV-SNP certificate: CN={cn!r}")
            if role in roles and roles[role] != der:
                raise VerifyError(f"two different {role.upper()} certificates given")
            roles[role] = der
        first, second = ("asvk", "ask") if vlek else ("ask", "asvk")
        return cls(
            vek=roles.get("vek", b""),
            ask=roles.get(first, roles.get(second, b"")),
            ark=roles.get("ark", b""),
            source=source,
        )

    def merged(self, other: SnpCollateral) -> SnpCollateral:
        """Self, with the certificates self lacks taken from ``other``."""
        return SnpCollateral(
            vek=self.vek or other.vek,
            ask=self.ask or other.ask,
            ark=self.ark or other.ark,
            source="+".join(s for s in (self.source, other.source) if s),
        )


@dataclass(frozen=True, slots=True)
class SnpVerification:
    """The result. ``status`` is ``UpToDate`` when signature, chain and TCB all check
    (policy failures are separate), ``OutOfDate`` when only the minimum TCB fails,
    ``Unverified`` without a VCEK/VLEK, ``Invalid`` otherwise."""

    status: str
    failures: tuple[SnpFailure, ...]
    report: SnpReport | None
    product: SnpProduct | None = None
    signer: SigningKey | None = None
    chain_sha256: tuple[str, ...] = ()  # VCEK/VLEK, ASK/ASVK, ARK

    @property
    def ok(self) -> bool:
        return not self.failures and self.status == "UpToDate"

    @property
    def reasons(self) -> tuple[SnpReason, ...]:
        return tuple(f.reason for f in self.failures)

    def details(self) -> dict[str, Any]:
        """A JSON-ready summary of the report and chain."""
        r = self.report
        if r is None:
            return {}
        return {
            "product": str(self.product) if self.product else None,
            "signing_key": r.signing_key.name,
            "report_version": r.version,
            "guest_svn": r.guest_svn,
            "vmpl": r.vmpl,
            "policy": f"0x{r.policy.raw:x}",
            "platform_info": f"0x{r.platform_info.raw:x}",
            "chip_id": r.chip_id.hex(),
            "reported_tcb": r.reported_tcb.components(),
            "current_tcb": r.current_tcb.components(),
            "committed_tcb": r.committed_tcb.components(),
            "launch_tcb": r.launch_tcb.components(),
            "firmware": f"{r.current_major}.{r.current_minor}.{r.current_build}",
            "id_key_digest": r.id_key_digest.hex(),
            "family_id": r.family_id.hex(),
            "image_id": r.image_id.hex(),
            "chain_sha256": list(self.chain_sha256),
        }


# -- certificates ---------------------------------------------------------------------------


def _load_der(der: bytes) -> x509.Certificate:
    """A DER certificate; AMD's VCEKs have serial number 0, which cryptography loads with a
    deprecation warning (RFC 5280 wants it positive): silenced here for that case only."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Parsed a serial number", category=CryptographyDeprecationWarning
            )
            return x509.load_der_x509_certificate(der)
    except (ValueError, x509.InvalidVersion) as e:
        raise VerifyError(f"unreadable certificate: {e}") from e


def load_certificates(data: bytes, *, max_size: int = MAX_CERTIFICATE_INPUT) -> tuple[bytes, ...]:
    """The certificates of one input as DER: one DER certificate, or PEM with one or more.

    The size cap is checked before decoding; anything else raises :class:`VerifyError`.
    """
    if len(data) > max_size:
        raise VerifyError(f"certificate input of {len(data)} bytes exceeds {max_size}")
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore",
                    message="Parsed a serial number",
                    category=CryptographyDeprecationWarning,
                )
                certs = x509.load_pem_x509_certificates(data)
        except (ValueError, x509.InvalidVersion) as e:
            raise VerifyError(f"unreadable PEM certificates: {e}") from e
        return tuple(c.public_bytes(serialization.Encoding.DER) for c in certs)
    _load_der(data)
    return (bytes(data),)


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str):
        raise VerifyError("certificate subject has no single common name")
    return names[0].value


def _issuer_cn(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return names[0].value if len(names) == 1 and isinstance(names[0].value, str) else ""


def _sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _product_of(name: str, prefix: str) -> SnpProduct | None:
    if not name.startswith(prefix):
        return None
    try:
        return SnpProduct(name[len(prefix) :])
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class AmdAnchors:
    """The shipped ARK, ASK and ASVK of each product, pin-checked."""

    ark: Mapping[SnpProduct, x509.Certificate]
    ask: Mapping[SnpProduct, x509.Certificate]
    asvk: Mapping[SnpProduct, x509.Certificate]

    def ark_product(self, cert: x509.Certificate) -> SnpProduct | None:
        """The product whose pinned ARK is byte-identical to ``cert``, if any."""
        digest = _sha256(cert)
        return next((p for p, pin in ARK_SHA256.items() if pin == digest), None)


@functools.cache
def amd_anchors() -> AmdAnchors:
    """Parse the shipped certificates once; a pin mismatch is a broken install."""

    def load(
        pems: Mapping[SnpProduct, bytes], pins: Mapping[SnpProduct, str], role: str
    ) -> dict[SnpProduct, x509.Certificate]:
        out = {}
        for product, pem in pems.items():
            cert = x509.load_pem_x509_certificate(pem)
            if _sha256(cert) != pins[product]:
                raise VerifyError(f"shipped {role} for {product} does not match its pin")
            out[product] = cert
        return out

    return AmdAnchors(
        ark=load(ARK_PEM, ARK_SHA256, "ARK"),
        ask=load(ASK_PEM, ASK_SHA256, "ASK"),
        asvk=load(ASVK_PEM, ASVK_SHA256, "ASVK"),
    )


@dataclass(frozen=True, slots=True)
class VekExtensions:
    """The KDS extensions of a VCEK or VLEK (#57230 Table 8)."""

    struct_version: int
    product_name: str
    spl: Mapping[str, int]
    hwid: bytes | None = None
    csp_id: str | None = None

    @property
    def product(self) -> SnpProduct | None:
        """The product line of productName (``Milan-B0`` -> Milan; VLEKs say ``Milan``)."""
        try:
            return SnpProduct(self.product_name.split("-", 1)[0])
        except ValueError:
            return None


def _der_small_int(value: bytes, what: str) -> int:
    # DER INTEGER, short form, 0..255 (go-sev-guest asn1U8).
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 2:
        raise VerifyError(f"VCEK/VLEK extension {what} is not a small DER INTEGER")
    if value[1] == 2 and (value[2] != 0 or value[3] < 0x80):
        raise VerifyError(f"VCEK/VLEK extension {what} is not minimally encoded")
    n = int.from_bytes(value[2:], "big", signed=True)
    if not 0 <= n <= 255:
        raise VerifyError(f"VCEK/VLEK extension {what} is {n}, not 0..255")
    return n


def _der_ia5(value: bytes, what: str) -> str:
    if len(value) < 2 or value[0] != 0x16 or value[1] != len(value) - 2 or value[1] > 127:
        raise VerifyError(f"VCEK/VLEK extension {what} is not a short DER IA5String")
    try:
        return value[2:].decode("ascii")
    except UnicodeDecodeError:
        raise VerifyError(f"VCEK/VLEK extension {what} is not ASCII") from None


def vek_extensions(cert: x509.Certificate) -> VekExtensions:
    """Read the KDS extensions of a VCEK or VLEK strictly.

    The hwID is the raw chip id (KDS writes it without an OCTET STRING tag; a tagged one is
    accepted too, as go-sev-guest ``asn1OctetString`` does). An unknown extension under
    AMD's arc 1.3.6.1.4.1.3704.1 is refused; other standard extensions are ignored.
    """
    try:
        exts = list(cert.extensions)
    except (ValueError, x509.DuplicateExtension) as e:
        raise VerifyError(f"VCEK/VLEK extensions unreadable: {e}") from e
    raw: dict[str, bytes] = {}
    for ext in exts:
        oid = ext.oid.dotted_string
        if not oid.startswith(_AMD_ARC):
            continue
        if oid not in _KNOWN_AMD_OIDS:
            raise VerifyError(f"VCEK/VLEK has an unknown AMD extension {oid}")
        value = ext.value
        if not isinstance(value, x509.UnrecognizedExtension):
            raise VerifyError(f"VCEK/VLEK extension {oid} is not raw")
        raw[oid] = value.value
    if _OID_STRUCT_VERSION not in raw or _OID_PRODUCT_NAME not in raw:
        raise VerifyError("VCEK/VLEK lacks the structVersion or productName extension")
    spl = {name: _der_small_int(raw[oid], name) for name, oid in _OID_SPL.items() if oid in raw}
    hwid = raw.get(_OID_HWID)
    if hwid is not None and len(hwid) not in (8, 64):
        if len(hwid) >= 2 and hwid[0] == 0x04 and hwid[1] == len(hwid) - 2:
            hwid = hwid[2:]
        else:
            raise VerifyError(f"VCEK hwID extension of {len(hwid)} bytes")
    csp = raw.get(_OID_CSP_ID)
    return VekExtensions(
        struct_version=_der_small_int(raw[_OID_STRUCT_VERSION], "structVersion"),
        product_name=_der_ia5(raw[_OID_PRODUCT_NAME], "productName"),
        spl=spl,
        hwid=hwid,
        csp_id=_der_ia5(csp, "cspId") if csp is not None else None,
    )


def _pss_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """None when ``issuer`` signed ``cert`` the AMD way, else why not."""
    if cert.signature_algorithm_oid != SignatureAlgorithmOID.RSASSA_PSS:
        return f"signature algorithm {cert.signature_algorithm_oid.dotted_string}, not RSASSA-PSS"
    if not isinstance(cert.signature_hash_algorithm, hashes.SHA384):
        return "signature hash is not SHA-384"
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != _AMD_RSA_BITS:
        return f"issuer key is not RSA-{_AMD_RSA_BITS}"
    if cert.issuer != issuer.subject:
        return "issuer name is not the signer's subject name"
    try:
        key.verify(cert.signature, cert.tbs_certificate_bytes, _PSS, hashes.SHA384())
    except InvalidSignature:
        return "RSASSA-PSS signature does not verify"
    return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, x509.DuplicateExtension, ValueError):
        return False  # unreadable extensions: not a CA (fail closed)
    return bc.ca


def _within(cert: x509.Certificate, when: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= when <= cert.not_valid_after_utc


def _expected_tcb(spl: Mapping[str, int], product: SnpProduct) -> tuple[int, list[str]]:
    """TCB_VERSION composed from the certificate's SPLs, and the required SPLs missing."""
    order = _TCB_BYTES_TURIN if product is SnpProduct.TURIN else _TCB_BYTES_MILAN_GENOA
    required = ["blSPL", "teeSPL", "snpSPL", "ucodeSPL"]
    if product is SnpProduct.TURIN:
        required.insert(0, "fmcSPL")
    missing = [n for n in required if n not in spl]
    return int.from_bytes(bytes(spl.get(n, 0) for n in order), "little"), missing


def _at(now: float | dt.datetime) -> dt.datetime:
    if isinstance(now, dt.datetime):
        return now if now.tzinfo else now.replace(tzinfo=dt.UTC)
    try:
        return dt.datetime.fromtimestamp(now, dt.UTC)
    except (OverflowError, ValueError, OSError) as e:
        raise VerifyError(f"verification time {now!r}: {e}") from e


# -- the verification -----------------------------------------------------------------------


def _policy_failures(r: SnpReport, policy: SnpPolicy) -> list[SnpFailure]:
    fails: list[SnpFailure] = []
    p = r.policy

    def fail(check: str, message: str) -> None:
        fails.append(SnpFailure(SnpReason.POLICY, message, check))

    if p.debug_allowed:
        fail("debug", "guest policy allows DEBUG: the host can read and change guest memory")
    if p.smt_allowed and not policy.allow_smt:
        fail("smt", "guest policy allows SMT and the verifier's policy does not")
    if p.migrate_ma_allowed and not policy.allow_migration_agent:
        fail("migrate-ma", "guest policy allows a migration agent and the policy does not")
    if r.signing_key not in policy.signing_keys and r.signing_key is not SigningKey.NONE:
        fail("signing-key", f"reports signed by a {r.signing_key.name} are not accepted")
    if policy.min_firmware is not None:
        for name, ver in (
            ("current", (r.current_major, r.current_minor)),
            ("committed", (r.committed_major, r.committed_minor)),
        ):
            if ver < policy.min_firmware:
                fail(
                    "firmware",
                    f"{name} firmware {ver[0]}.{ver[1]} is below "
                    f"{policy.min_firmware[0]}.{policy.min_firmware[1]}",
                )
    return fails


def _status(fails: list[SnpFailure]) -> str:
    hard = {
        SnpReason.MALFORMED,
        SnpReason.COLLATERAL_MALFORMED,
        SnpReason.CHAIN,
        SnpReason.VALIDITY,
        SnpReason.SIGNATURE,
    }
    if any(f.reason in hard or (f.reason is SnpReason.TCB and f.check != "min-tcb") for f in fails):
        return "Invalid"
    if any(f.reason is SnpReason.TCB for f in fails):
        return "OutOfDate"
    return "UpToDate"


def verify_snp_report(
    raw: bytes,
    collateral: SnpCollateral | None,
    now: float | dt.datetime,
    policy: SnpPolicy | None = None,
) -> SnpVerification:
    """Verify one report; see the module docstring for every check. Never raises for bad
    evidence or collateral: failures say what is wrong (a bad ``now`` is a VerifyError)."""
    policy = SnpPolicy() if policy is None else policy
    when = _at(now)  # a bad time is the caller's error: VerifyError
    try:
        report = parse_snp(raw)
    except QuoteError as e:
        return SnpVerification("Invalid", (SnpFailure(SnpReason.MALFORMED, str(e)),), None)
    fails = _policy_failures(report, policy)
    if collateral is None or not collateral.vek:
        fails.insert(
            0,
            SnpFailure(
                SnpReason.COLLATERAL_MISSING,
                "no VCEK/VLEK certificate: the report signature is not verified",
            ),
        )
        return SnpVerification("Unverified", tuple(fails), report, report.product)
    try:
        chain_fails, report, product, signer, chain = _verify_chain_and_signature(
            report, collateral, when, policy
        )
    except (ValueError, UnsupportedAlgorithm) as e:
        # cryptography refusing a field of a certificate (a key or algorithm it does not
        # support, an extension it cannot decode) deep in the chain checks.
        fails.insert(0, SnpFailure(SnpReason.COLLATERAL_MALFORMED, f"certificate: {e}"))
        return SnpVerification("Invalid", tuple(fails), report)
    fails = chain_fails + fails
    return SnpVerification(_status(fails), tuple(fails), report, product, signer, chain)


def _verify_chain_and_signature(
    report: SnpReport, coll: SnpCollateral, when: dt.datetime, policy: SnpPolicy
) -> tuple[list[SnpFailure], SnpReport, SnpProduct | None, SigningKey | None, tuple[str, ...]]:
    fails: list[SnpFailure] = []

    def fail(reason: SnpReason, message: str, check: str = "") -> None:
        fails.append(SnpFailure(reason, message, check))

    anchors = amd_anchors()
    try:
        vek = _load_der(coll.vek)
        exts = vek_extensions(vek)
        ask_given = _load_der(coll.ask) if coll.ask else None
        ark_given = _load_der(coll.ark) if coll.ark else None
    except VerifyError as e:
        fail(SnpReason.COLLATERAL_MALFORMED, str(e))
        return fails, report, None, None, ()

    # Which kind of endorsement key, and for which product.
    cn = _common_name_or_empty(vek)
    signer = {"SEV-VCEK": SigningKey.VCEK, "SEV-VLEK": SigningKey.VLEK}.get(cn)
    if signer is None:
        fail(SnpReason.CHAIN, f"endorsement certificate CN={cn!r} is neither SEV-VCEK nor SEV-VLEK")
        return fails, report, None, None, ()
    if signer is SigningKey.VCEK and (exts.hwid is None or exts.csp_id is not None):
        fail(SnpReason.COLLATERAL_MALFORMED, "VCEK must have a hwID and no cspId extension")
    if signer is SigningKey.VLEK and (exts.csp_id is None or exts.hwid is not None):
        fail(SnpReason.COLLATERAL_MALFORMED, "VLEK must have a cspId and no hwID extension")
    issuer_prefix = "SEV-" if signer is SigningKey.VCEK else "SEV-VLEK-"
    product = _product_of(_issuer_cn(vek), issuer_prefix)
    if product is None:
        fail(SnpReason.CHAIN, f"{signer.name} issuer {_issuer_cn(vek)!r} names no known product")
        return fails, report, None, signer, ()
    if exts.product is not product:
        fail(
            SnpReason.CHAIN,
            f"{signer.name} productName {exts.product_name!r} is not its issuer's {product}",
        )
    if report.signing_key is SigningKey.NONE:
        fail(SnpReason.SIGNATURE, "the report is not signed (SIGNING_KEY 7: none)")
    elif report.signing_key is not signer:
        fail(
            SnpReason.CHAIN,
            f"the report says a {report.signing_key.name} signed it; "
            f"the certificate given is a {signer.name}",
            "signing-key",
        )
    if product not in policy.products:
        fails.append(SnpFailure(SnpReason.POLICY, f"{product} is not accepted", "product"))

    # The report's CPUID must agree, and its TCB fields are read with the product's layout.
    if report.turin_tcb != (product is SnpProduct.TURIN) or report.product not in (None, product):
        try:
            report = parse_snp(report.raw, product=product)
        except QuoteError as e:
            fail(SnpReason.CHAIN, f"{e}: the certificate chain is for {product}")

    # ARK: given (must be a pinned AMD root of this product) or the shipped one.
    ark = anchors.ark[product]
    if ark_given is not None:
        given_product = anchors.ark_product(ark_given)
        if given_product is None:
            fail(
                SnpReason.CHAIN,
                f"the ARK given ({_common_name_or_empty(ark_given)}) is not one of AMD's roots",
            )
        elif given_product is not product:
            fail(SnpReason.CHAIN, f"the ARK given is {given_product}'s, the VCEK is {product}'s")
        ark = ark_given
    why = _pss_signed_by(ark, ark)
    if why is not None:
        fail(SnpReason.CHAIN, f"ARK self-signature: {why}")

    # ASK (VCEK) or ASVK (VLEK): given, or the shipped one.
    shipped = anchors.ask if signer is SigningKey.VCEK else anchors.asvk
    ask = ask_given if ask_given is not None else shipped[product]
    role = "ASK" if signer is SigningKey.VCEK else "ASVK"
    want_cn = f"{issuer_prefix}{product}"
    if _common_name_or_empty(ask) != want_cn:
        fail(SnpReason.CHAIN, f"{role} is {_common_name_or_empty(ask)!r}, expected {want_cn!r}")
    if not _is_ca(ask) or not _is_ca(ark):
        fail(SnpReason.CHAIN, f"{role} or ARK is not a CA certificate")
    why = _pss_signed_by(ask, ark)
    if why is not None:
        fail(SnpReason.CHAIN, f"{role} not signed by the ARK: {why}")
    why = _pss_signed_by(vek, ask)
    if why is not None:
        fail(SnpReason.CHAIN, f"{signer.name} not signed by the {role}: {why}")
    for name, cert in ((signer.name, vek), (role, ask), ("ARK", ark)):
        if not _within(cert, when):
            fail(
                SnpReason.VALIDITY,
                f"{name} valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}, not at {when:%Y-%m-%dT%H:%M:%SZ}",
            )
    chain = (_sha256(vek), _sha256(ask), _sha256(ark))

    # The report signature (#56860 Table 23: bytes 0x000..0x29F; Table 24: r, s LE).
    if report.signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        fail(SnpReason.SIGNATURE, f"SIGNATURE_ALGO {report.signature_algo} is not 1 (P-384)")
    else:
        key = vek.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
            fail(SnpReason.CHAIN, f"{signer.name} key is not ECDSA P-384")
        else:
            sig = encode_dss_signature(report.signature_r, report.signature_s)
            try:
                key.verify(sig, report.signed, ec.ECDSA(hashes.SHA384()))
            except InvalidSignature:
                fail(
                    SnpReason.SIGNATURE, f"report signature does not verify with the {signer.name}"
                )

    # The endorsement key is this chip's (VCEK) at this TCB (VCEK and VLEK).
    if signer is SigningKey.VCEK and exts.hwid is not None:
        size = _HWID_SIZE[product]
        if report.chip_id_masked:
            fail(SnpReason.TCB, "CHIP_ID is masked (all zero): the VCEK cannot be bound", "chip-id")
        elif len(exts.hwid) != size or exts.hwid != report.chip_id[:size]:
            fail(SnpReason.TCB, "the VCEK's hwID is not the report's CHIP_ID", "chip-id")
    expected, missing = _expected_tcb(exts.spl, product)
    if missing:
        fail(SnpReason.COLLATERAL_MALFORMED, f"{signer.name} lacks {', '.join(missing)}")
    elif expected != report.reported_tcb.raw:
        cert_tcb = TcbVersion.decode(expected, turin=product is SnpProduct.TURIN)
        fail(
            SnpReason.TCB,
            f"the {signer.name} is for TCB {cert_tcb}, the report's REPORTED_TCB is "
            f"{report.reported_tcb}",
            "reported-tcb",
        )
    floor = policy.floor(product)
    if floor is not None:
        for name, tcb in (
            ("REPORTED_TCB", report.reported_tcb),
            ("CURRENT_TCB", report.current_tcb),
            ("COMMITTED_TCB", report.committed_tcb),
        ):
            if not floor.admits(tcb):
                fail(SnpReason.TCB, f"{name} {tcb} is below the policy's minimum", "min-tcb")
    return fails, report, product, signer, chain


def check_vek(vek: bytes, product: SnpProduct) -> SigningKey:
    """The kind of ``vek`` when it is a VCEK or VLEK signed by ``product``'s shipped ASK or
    ASVK; else :class:`VerifyError`. Run on fetched certificates before they are cached."""
    cert = _load_der(vek)
    kind = {"SEV-VCEK": SigningKey.VCEK, "SEV-VLEK": SigningKey.VLEK}.get(_common_name(cert))
    if kind is None:
        raise VerifyError(f"not a VCEK or VLEK: CN={_common_name(cert)!r}")
    anchors = amd_anchors()
    issuer = (anchors.ask if kind is SigningKey.VCEK else anchors.asvk)[product]
    why = _pss_signed_by(cert, issuer)
    if why is not None:
        raise VerifyError(f"{kind.name} is not signed by AMD's {product} key: {why}")
    return kind


def check_cert_chain(ask: bytes, ark: bytes, product: SnpProduct) -> None:
    """:class:`VerifyError` unless ``ark`` is AMD's pinned ``product`` root and signed
    ``ask``. Run on a fetched ``cert_chain`` before it is cached."""
    anchors = amd_anchors()
    ark_cert, ask_cert = _load_der(ark), _load_der(ask)
    if anchors.ark_product(ark_cert) is not product:
        raise VerifyError(f"the ARK is not AMD's {product} root")
    why = _pss_signed_by(ask_cert, ark_cert)
    if why is not None:
        raise VerifyError(f"the ASK/ASVK is not signed by AMD's {product} root: {why}")


def _common_name_or_empty(cert: x509.Certificate) -> str:
    try:
        return _common_name(cert)
    except VerifyError:
        return ""


def collateral_from_cert_table(
    table: bytes, *, report: SnpReport | None = None, source: str = "cert-table"
) -> SnpCollateral:
    """The certificates of an extended report's certificate table.

    Entries are keyed by GUID: VCEK, VLEK, ASK (also the ASVK) and ARK; other entries (e.g.
    go-sev-guest's extra platform info) are ignored. With both a VCEK and a VLEK the
    ``report``'s SIGNING_KEY picks one (the VCEK without a report). Each entry must hold
    exactly one certificate, DER or PEM. Pure; raises :class:`QuoteError` for a malformed
    table and :class:`VerifyError` for an unreadable certificate.
    """
    by_guid = {e.guid: e.data for e in parse_cert_table(table)}

    def one(guid_data: bytes, what: str) -> bytes:
        certs = load_certificates(guid_data)
        if len(certs) != 1:
            raise VerifyError(f"certificate table {what} entry holds {len(certs)} certificates")
        return certs[0]

    vek_guid = VCEK_GUID
    if VLEK_GUID in by_guid and (
        VCEK_GUID not in by_guid or (report is not None and report.signing_key is SigningKey.VLEK)
    ):
        vek_guid = VLEK_GUID
    return SnpCollateral(
        vek=one(by_guid[vek_guid], "VCEK/VLEK") if vek_guid in by_guid else b"",
        ask=one(by_guid[ASK_GUID], "ASK") if ASK_GUID in by_guid else b"",
        ark=one(by_guid[ARK_GUID], "ARK") if ARK_GUID in by_guid else b"",
        source=source,
    )
