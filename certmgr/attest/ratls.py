"""RA-TLS certificates in the interoperable format: building ours, parsing anyone's.

Format (the one Gramine >= 1.8, rats-tls and the Intel SGX SDK emit and accept):

- a self-signed X.509 certificate whose key was generated inside the TEE;
- extension ``2.23.133.5.4.9`` (TCG DICE "conceptual message wrapper", TCG DICE Attestation
  Architecture v1.1 section 6.1.8), NOT critical, whose value is
  ``CBOR tag 60000 ([bstr quote, bstr claims])`` (RFC 8949 section 3.4 tags), in
  definite-length encoding with nothing after the item (as every CBOR value here is read:
  :func:`certmgr.attest.claims.strict_loads`);
- ``claims`` is a CBOR map with text keys and byte-string values
  (:mod:`certmgr.attest.claims`): ``"pubkey-hash"`` holds the CBOR hash-entry
  ``[alg, H(DER SubjectPublicKeyInfo)]`` (alg 1 / 7 / 8 = SHA-256 / SHA-384 / SHA-512), an
  optional ``"nonce"``, and our extra claims (``hostname``, ``not-before``, ``not-after``,
  ``signing-address``), which peers ignore;
- the quote's report_data is ``SHA-256(claims bytes) || 32 zero bytes``;
- the tag names the evidence kind, as rats-tls ``src/include/internal/dice.h`` numbers them:
  60000 an Intel TEE quote (SGX or TDX), ``0x1a7504`` an AMD SEV-SNP ATTESTATION_REPORT
  (1184 bytes); a tag that does not match the evidence it wraps is refused;
- optionally extension ``2.23.133.5.4.2`` (endorsements: the quote's collateral, or the
  SNP certificate table), NOT critical, under the same tag
  (:mod:`certmgr.attest.endorsements`).

Other producers' certificates are read too (tests/data/ratls/ holds a real one of each):

- the legacy raw-evidence extensions ``1.2.840.113741.1337.6`` (SGX quote; Gramine, old
  rats-tls), ``.1337.8`` (TDX quote) and ``.1337.20`` (SEV-SNP report) of rats-tls, and the
  Intel SGX SDK's ``1.2.840.113741.1.13.1``: report_data[:32] is a SHA-256 of the key, over
  the DER SubjectPublicKeyInfo (Gramine, rats-tls), the PKCS#1 RSAPublicKey (rats-tls's RSA
  path) or the PEM text with its trailing NUL (the SDK before TCG); each binds the same key,
  so each is accepted and the verdict says which held. Gramine writes its legacy extnID
  wrongly (the complete OID TLV ``06 09 2a 86 48 86 f8 4d 8a 39 06`` as the OID's content, so
  decoders read 0.6.9.42.840.113741.1337.6): matched on those raw bytes, as Gramine's own
  verifier does;
- Gramine >= 1.8 and the SDK write a legacy extension *next to* ``2.23.133.5.4.9``. The TCG
  one is then the evidence (both producers' verifiers try it first and never fall back);
  the other is kept in :attr:`RaTlsCert.extra_quotes` and must tell the same story
  (:mod:`certmgr.attest.verify`: same measurement, and it binds this key or is the same quote);
- dstack's extensions under ``1.3.6.1.4.1.62397.1`` (:mod:`certmgr.attest.dstack`).

The parser is a small bounded DER reader of its own, so that a peer certificate which
cryptography's loader refuses (e.g. a NULL parameter in the ECDSA signature algorithm, or an
explicitly encoded ``critical FALSE``) is still read; the self-signature is then checked
with the public key over the exact TBSCertificate bytes. Everything malformed raises
:class:`RaTlsError` and nothing else. This module checks *structure and binding*; whether the
quote is genuine is :mod:`certmgr.attest.verify`'s job.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from certmgr.attest import claims as claims_codec
from certmgr.attest import dstack
from certmgr.attest.claims import HASH_ALGS, Claims, parse_claims
from certmgr.attest.cmw import CMW_OID
from certmgr.attest.der import TLV, children, decode_oid, expect, read_tlv
from certmgr.attest.endorsements import ENDORSEMENTS_OID, INTEL_QUOTE_TAG, SNP_REPORT_TAG
from certmgr.attest.quote import is_snp_report
from certmgr.errors import RaTlsError

__all__ = [
    "CMW_TAG",
    "ENDORSEMENTS_OID",
    "EVIDENCE_TAGS",
    "HASH_ALGS",
    "INTEL_SDK_QUOTE_OID",
    "LEGACY_QUOTE_OID",
    "MAX_CERT_SIZE",
    "MAX_EXTENSION_SIZE",
    "RATLS_OID",
    "RaTlsCert",
    "build_certificate",
    "claims_report_data",
    "encode_claims",
    "encode_extension",
    "evidence_tag",
    "expected_report_data",
    "legacy_binding",
    "legacy_key_hashes",
    "parse_certificate",
    "parse_extension",
    "report_data_for_claims",
]

RATLS_OID = "2.23.133.5.4.9"
LEGACY_QUOTE_OID = "1.2.840.113741.1337.6"  # rats-tls oid.h: SGX ECDSA quote
LEGACY_TDX_OID = "1.2.840.113741.1337.8"  # rats-tls oid.h: TDX quote
LEGACY_SNP_OID = "1.2.840.113741.1337.20"  # rats-tls oid.h: SEV-SNP report
INTEL_SDK_QUOTE_OID = "1.2.840.113741.1.13.1"  # intel/linux-sgx sdk/ttls: raw quote
_LEGACY_OIDS = frozenset({LEGACY_QUOTE_OID, LEGACY_TDX_OID, LEGACY_SNP_OID, INTEL_SDK_QUOTE_OID})
# Gramine's ra_tls_common.h: "below OID is actually wrong: it shouldn't have the first two
# bytes (0x06 0x09)"; the extnID's content is a whole OID TLV.
_GRAMINE_MISENCODED = bytes.fromhex("06092a864886f84d8a3906")
CMW_TAG = INTEL_QUOTE_TAG  # 60000
EVIDENCE_TAGS = (INTEL_QUOTE_TAG, SNP_REPORT_TAG)
MAX_CERT_SIZE = 128 * 1024
MAX_EXTENSION_SIZE = 96 * 1024

_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_ECDSA_SHA384 = "1.2.840.10045.4.3.3"
_RSA_SHA256 = "1.2.840.113549.1.1.11"
_RSA_SHA384 = "1.2.840.113549.1.1.12"
_RSA_ENCRYPTION = "1.2.840.113549.1.1.1"
# issuerUniqueID [1] IMPLICIT BIT STRING (primitive or, in BER, constructed),
# subjectUniqueID [2], extensions [3] EXPLICIT: their order after subjectPublicKeyInfo.
_TRAILING_TBS_FIELDS: Mapping[int, int] = {0x81: 1, 0xA1: 1, 0x82: 2, 0xA2: 2, 0xA3: 3}
# Self-signature algorithms. SHA-1 is among them because real RA-TLS certificates use it
# (rats-tls's wolfSSL build signs with sha1WithRSAEncryption): an RA-TLS certificate's
# self-signature only shows possession of the key, which the TLS handshake shows again, and
# the key is bound by the quote, not by this signature; the verdict names the algorithm.
_SIG_ALGS: Mapping[str, hashes.HashAlgorithm] = {
    "1.2.840.10045.4.1": hashes.SHA1(),  # noqa: S303  # ecdsa-with-SHA1 (see above)
    _ECDSA_SHA256: hashes.SHA256(),
    _ECDSA_SHA384: hashes.SHA384(),
    "1.2.840.10045.4.3.4": hashes.SHA512(),
    "1.2.840.113549.1.1.5": hashes.SHA1(),  # noqa: S303  # sha1WithRSAEncryption
    _RSA_SHA256: hashes.SHA256(),
    _RSA_SHA384: hashes.SHA384(),
    "1.2.840.113549.1.1.13": hashes.SHA512(),
}


@dataclass(frozen=True, slots=True)
class RaTlsCert:
    """What a parsed RA-TLS certificate says (its quote is not verified here)."""

    der: bytes
    spki_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    format: str  # "tcg-cmw", "intel-legacy" or "dstack"
    quote: bytes
    claims_bytes: bytes = b""
    claims: Claims | None = None  # None for the legacy and dstack formats (no claims)
    self_signature_ok: bool = False
    signature_hash: str = ""  # the self-signature's hash algorithm ("sha256", ...)
    self_issued: bool = False  # issuer == subject (dstack leaves are issued by an app CA)
    quote_extension: str = ""  # the OID the quote came from
    # Further quote extensions next to 2.23.133.5.4.9, as (OID, raw quote): Gramine's legacy
    # quote, the Intel SDK's copy. The verifier requires them to agree with the main one.
    extra_quotes: tuple[tuple[str, bytes], ...] = ()
    dstack: dstack.DstackAttestation | None = None
    dstack_app_id: bytes | None = None  # extension .1.3 (not covered by the quote)
    dstack_usage: str | None = None  # extension .1.4
    # Every extension as (critical, extnValue), by dotted OID (Gramine's mis-encoded legacy
    # one under its intended OID), for the ones this module does not interpret.
    extensions: Mapping[str, tuple[bool, bytes]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def spki_sha256(self) -> bytes:
        return hashlib.sha256(self.spki_der).digest()


# -- claims and extension ------------------------------------------------------------------


def encode_claims(spki_der: bytes, extra: Mapping[str, Any] | None = None) -> bytes:
    """Our certificate's claims buffer (:func:`certmgr.attest.claims.encode_claims`)."""
    return claims_codec.encode_claims(spki_der, extra)


def report_data_for_claims(claims_bytes: bytes) -> bytes:
    """``SHA-256(claims) || 0^32``: the 64 bytes a quote over these claims must carry."""
    return hashlib.sha256(claims_bytes).digest() + bytes(32)


def evidence_tag(quote: bytes) -> int:
    """The CBOR tag for this evidence: ``0x1a7504`` for an SEV-SNP report, else 60000."""
    return SNP_REPORT_TAG if is_snp_report(quote) else INTEL_QUOTE_TAG


def encode_extension(quote: bytes, claims_bytes: bytes) -> bytes:
    """The ``2.23.133.5.4.9`` value: ``tag([bstr quote, bstr claims])``, the tag by kind."""
    return cbor2.dumps(cbor2.CBORTag(evidence_tag(quote), [quote, claims_bytes]))


def _cbor_loads(data: bytes, what: str) -> Any:
    return claims_codec.strict_loads(data, what)


def parse_extension(value: bytes) -> tuple[bytes, bytes, Claims]:
    """Decode a ``2.23.133.5.4.9`` value into (quote, claims bytes, claims), strictly."""
    if len(value) > MAX_EXTENSION_SIZE:
        raise RaTlsError(f"attestation extension too large ({len(value)} bytes)")
    top = _cbor_loads(value, "attestation extension")
    if not isinstance(top, cbor2.CBORTag) or top.tag not in EVIDENCE_TAGS:
        raise RaTlsError(
            f"attestation extension is not CBOR tag {INTEL_QUOTE_TAG} (Intel quote) or "
            f"{SNP_REPORT_TAG:#x} (SEV-SNP report)"
        )
    v = top.value
    # cbor2 decodes an array under a tag as a tuple, elsewhere as a list.
    if not (isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, bytes) for x in v)):
        raise RaTlsError("attestation extension must wrap [bstr quote, bstr claims]")
    quote, claims_bytes = v
    if top.tag != evidence_tag(quote):
        # A verifier picks its parser by the tag (rats-tls does): a tag that lies about the
        # evidence would let two verifiers read one certificate differently.
        kind = "an SEV-SNP report" if is_snp_report(quote) else "not an SEV-SNP report"
        raise RaTlsError(
            f"attestation extension tag {top.tag:#x} does not match its evidence ({kind})"
        )
    return quote, claims_bytes, parse_claims(claims_bytes)


def legacy_key_hashes(spki_der: bytes) -> dict[str, bytes]:
    """What a legacy quote's report_data[:32] may be: SHA-256 of the DER
    SubjectPublicKeyInfo (Gramine, rats-tls), of the PEM public key text with its trailing
    NUL (Intel SGX SDK ttls before TCG: ``PEM_write_bio_PUBKEY`` output + NUL) or, for RSA, of
    the PKCS#1 RSAPublicKey (rats-tls: the SPKI's subjectPublicKey BIT STRING content)."""
    out = {"spki-sha256": hashlib.sha256(spki_der).digest()}
    try:
        pem = serialization.load_der_public_key(spki_der).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        out["pem-nul-sha256"] = hashlib.sha256(pem + b"\x00").digest()
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        parts = children(read_tlv(spki_der, 0)[0].value)
        alg = children(expect(parts[0], 0x30, "algorithm").value)
        if decode_oid(expect(alg[0], 0x06, "algorithm").value) == _RSA_ENCRYPTION:
            bits = expect(parts[1], 0x03, "subjectPublicKey").value
            if bits[:1] == b"\x00":
                out["pkcs1-sha256"] = hashlib.sha256(bits[1:]).digest()
    except (RaTlsError, IndexError):
        pass
    return out


def expected_report_data(cert: RaTlsCert) -> bytes:
    """The report_data a genuine quote in this certificate must carry (64 bytes): for the
    legacy format the SPKI binding (:func:`legacy_binding` knows the others), for dstack's
    the SHA-512 rule, for the TCG format the SHA-256 one (:func:`claims_report_data` also
    gives the SHA-384 one Intel uses on TDX)."""
    if cert.format == "intel-legacy":
        return cert.spki_sha256 + bytes(32)
    if cert.format == "dstack":
        return dstack.ratls_report_data(cert.spki_der)
    return report_data_for_claims(cert.claims_bytes)


def claims_report_data(claims_bytes: bytes, *, tdx: bool) -> dict[str, bytes]:
    """The report_data rules for a claims buffer: ``SHA-256(claims) || 0^32`` (every SGX
    producer, rats-tls on TDX) and, for a TDX quote, ``SHA-384(claims) || 0^16`` (Intel's
    ttls under TDX_ENV), by rule name."""
    out = {"claims-sha256": report_data_for_claims(claims_bytes)}
    if tdx:
        out["claims-sha384"] = hashlib.sha384(claims_bytes).digest() + bytes(16)
    return out


def legacy_binding(cert: RaTlsCert, report_data: bytes) -> str | None:
    """Which key hash a legacy certificate's report_data[:32] holds, or None."""
    for name, digest in legacy_key_hashes(cert.spki_der).items():
        if report_data[:32] == digest:
            return name
    return None


def pubkey_hash_matches(cert: RaTlsCert) -> bool:
    """Whether the claims' pubkey-hash is the hash of this certificate's own SPKI."""
    if cert.format != "tcg-cmw":
        return True  # legacy and dstack bind the key through report_data directly
    return cert.claims is not None and cert.claims.pubkey_hash_matches(cert.spki_der)


# -- building ------------------------------------------------------------------------------


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def build_certificate(
    key: ec.EllipticCurvePrivateKey,
    server_name: str,
    quote: bytes,
    claims_bytes: bytes,
    *,
    not_before: dt.datetime,
    not_after: dt.datetime,
    endorsements: bytes | None = None,
    cmw: bytes | None = None,
) -> x509.Certificate:
    """A self-signed RA-TLS certificate (ECDSA P-256, SHA-256) carrying quote and claims,
    and the ``2.23.133.5.4.2`` endorsements value when given
    (:mod:`certmgr.attest.endorsements`), and the id-pe-cmw value (RFC 9999,
    :mod:`certmgr.attest.cmw`) when given."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name[:64])])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_san(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(RATLS_OID), encode_extension(quote, claims_bytes)
            ),
            critical=False,
        )
    )
    if endorsements is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(ENDORSEMENTS_OID), endorsements),
            critical=False,
        )
    if cmw is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(CMW_OID), cmw), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def _time(tlv: TLV) -> dt.datetime:
    try:
        s = tlv.value.decode("ascii")
        if tlv.tag == 0x17:  # UTCTime YYMMDDHHMMSSZ (RFC 5280 4.1.2.5.1)
            t = dt.datetime.strptime(s, "%y%m%d%H%M%SZ")
            if t.year >= 2050:  # RFC 5280: YY >= 50 is 19YY (strptime pivots at 69)
                t = t.replace(year=t.year - 100)
        elif tlv.tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
            t = dt.datetime.strptime(s, "%Y%m%d%H%M%SZ")
        else:
            raise RaTlsError(f"DER: validity time has tag {tlv.tag:#x}")
    except (UnicodeDecodeError, ValueError) as e:
        raise RaTlsError(f"DER: malformed time: {e}") from e
    return t.replace(tzinfo=dt.UTC)


def _verify_self_signature(
    spki_der: bytes, tbs_raw: bytes, alg_oid: str, sig_bitstring: bytes
) -> bool:
    hash_alg = _SIG_ALGS.get(alg_oid)
    if hash_alg is None or not sig_bitstring or sig_bitstring[0] != 0:
        return False
    sig = sig_bitstring[1:]
    try:
        pub = serialization.load_der_public_key(spki_der)
        if isinstance(pub, ec.EllipticCurvePublicKey) and alg_oid.startswith("1.2.840.10045"):
            pub.verify(sig, tbs_raw, ec.ECDSA(hash_alg))
        elif isinstance(pub, rsa.RSAPublicKey) and alg_oid.startswith("1.2.840.113549"):
            pub.verify(sig, tbs_raw, padding.PKCS1v15(), hash_alg)
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def parse_certificate(data: bytes) -> RaTlsCert:
    """Parse a PEM or DER RA-TLS certificate (ours or another implementation's).

    Strict where it matters for security (one attestation extension, exact CBOR shape,
    size caps before decoding), tolerant of encoding slips that do not (NULL algorithm
    parameters, explicit ``critical FALSE``, non-minimal lengths).
    """
    if len(data) > MAX_CERT_SIZE:
        raise RaTlsError(f"certificate too large ({len(data)} bytes)")
    der = _pem_to_der(data) if data.lstrip().startswith(b"-----BEGIN") else bytes(data)
    cert_tlv, end = read_tlv(der, 0)
    expect(cert_tlv, 0x30, "Certificate")
    if der[end:].strip(b"\x00"):
        raise RaTlsError("trailing data after the certificate")
    parts = children(cert_tlv.value)
    if len(parts) != 3:
        raise RaTlsError("Certificate must have tbsCertificate, algorithm and signature")
    tbs = expect(parts[0], 0x30, "tbsCertificate")
    alg = children(expect(parts[1], 0x30, "signatureAlgorithm").value)
    if not alg:
        raise RaTlsError("empty signatureAlgorithm")
    alg_oid = decode_oid(expect(alg[0], 0x06, "algorithm").value)
    sig = expect(parts[2], 0x03, "signatureValue").value

    fields = children(tbs.value)
    i = 0
    if fields and fields[0].tag == 0xA0:  # [0] EXPLICIT version
        i = 1
    if len(fields) < i + 6:
        raise RaTlsError("tbsCertificate too short")
    validity = children(expect(fields[i + 3], 0x30, "validity").value)
    if len(validity) != 2:
        raise RaTlsError("validity must hold notBefore and notAfter")
    not_before, not_after = _time(validity[0]), _time(validity[1])
    spki = expect(fields[i + 5], 0x30, "subjectPublicKeyInfo").raw
    ext_list: list[TLV] = []
    # RFC 5280 4.1: after the key come issuerUniqueID [1], subjectUniqueID [2] and
    # extensions [3], each optional, in this order. A second [3] would give another
    # verifier (reading the first) other extensions than we read: refused, as any other
    # field is.
    rank = 0
    for f in fields[i + 6 :]:
        r = _TRAILING_TBS_FIELDS.get(f.tag, 0)
        if r <= rank:
            raise RaTlsError(f"tbsCertificate: unexpected field of tag {f.tag:#x} after the key")
        rank = r
        if f.tag == 0xA3:
            inner = children(f.value)
            if len(inner) != 1:
                raise RaTlsError("[3] extensions must wrap one SEQUENCE")
            ext_list = children(expect(inner[0], 0x30, "extensions").value)
    found: dict[str, bytes] = {}
    extensions: dict[str, tuple[bool, bytes]] = {}
    for ext in ext_list:
        items = children(expect(ext, 0x30, "Extension").value)
        if len(items) not in (2, 3):
            raise RaTlsError("Extension must be (oid, [critical], value)")
        oid_raw = expect(items[0], 0x06, "extnID").value
        oid = LEGACY_QUOTE_OID if oid_raw == _GRAMINE_MISENCODED else decode_oid(oid_raw)
        if oid in found:
            # RFC 5280 4.2: "A certificate MUST NOT include more than one instance of a
            # particular extension." Two quotes would let a verifier and a peer disagree.
            raise RaTlsError(f"duplicate extension {oid}")
        critical = False
        if len(items) == 3:
            crit = expect(items[1], 0x01, "critical")
            critical = crit.value not in (b"", b"\x00")
        value = expect(items[-1], 0x04, "extnValue").value
        if oid == RATLS_OID and critical:
            raise RaTlsError(f"extension {RATLS_OID} must not be critical")
        found[oid] = value
        extensions[oid] = (critical, value)
    base: dict[str, Any] = {
        "extensions": MappingProxyType(extensions),
        "der": cert_tlv.raw,
        "spki_der": spki,
        "not_before": not_before,
        "not_after": not_after,
        "self_signature_ok": _verify_self_signature(spki, tbs.raw, alg_oid, sig),
        "self_issued": fields[i + 2].raw == fields[i + 4].raw,
        "signature_hash": _SIG_ALGS[alg_oid].name if alg_oid in _SIG_ALGS else alg_oid,
    }
    legacy = sorted(o for o in found if o in _LEGACY_OIDS)
    dstack_oids = sorted(o for o in found if o in dstack.OIDS)
    for o in legacy:
        if len(found[o]) > MAX_EXTENSION_SIZE:
            raise RaTlsError(f"quote extension {o} too large ({len(found[o])} bytes)")
    if RATLS_OID in found:
        if dstack_oids:
            raise RaTlsError("certificate mixes dstack and 2.23.133.5.4.9 attestation extensions")
        quote, claims_bytes, claims = parse_extension(found[RATLS_OID])
        return RaTlsCert(
            **base,
            format="tcg-cmw",
            quote=quote,
            claims_bytes=claims_bytes,
            claims=claims,
            quote_extension=RATLS_OID,
            extra_quotes=tuple((o, found[o]) for o in legacy),
        )
    if dstack.TDX_QUOTE_OID in found or dstack.ATTESTATION_OID in found:
        if legacy:
            raise RaTlsError("certificate mixes dstack and legacy quote extensions")
        return _dstack_cert(base, found)
    if len(legacy) > 1:
        raise RaTlsError(f"certificate carries {len(legacy)} legacy quote extensions")
    if legacy:
        return RaTlsCert(
            **base, format="intel-legacy", quote=found[legacy[0]], quote_extension=legacy[0]
        )
    raise RaTlsError(
        f"no attestation extension ({RATLS_OID}, {LEGACY_QUOTE_OID}, {INTEL_SDK_QUOTE_OID} "
        f"or dstack's {dstack.OID_ARC}.*)"
    )


def _dstack_cert(base: dict[str, Any], found: Mapping[str, bytes]) -> RaTlsCert:
    for oid in dstack.OIDS & found.keys():
        if len(found[oid]) > MAX_EXTENSION_SIZE:
            raise RaTlsError(f"dstack extension {oid} too large ({len(found[oid])} bytes)")
    payload = {oid: dstack.unwrap_octets(found[oid]) for oid in dstack.OIDS & found.keys()}
    if dstack.ATTESTATION_OID in payload:  # dstack's reader prefers it over .1.1/.1.2
        att = dstack.decode_attestation(payload[dstack.ATTESTATION_OID])
        ext = dstack.ATTESTATION_OID
    else:
        att = dstack.from_classic(payload[dstack.TDX_QUOTE_OID], payload.get(dstack.EVENT_LOG_OID))
        ext = dstack.TDX_QUOTE_OID
    usage = payload.get(dstack.USAGE_OID)
    try:
        usage_text = usage.decode("utf-8")[:200] if usage is not None else None
    except UnicodeDecodeError as e:
        raise RaTlsError(f"dstack usage extension is not UTF-8: {e}") from e
    return RaTlsCert(
        **base,
        format="dstack",
        quote=att.quote,
        quote_extension=ext,
        dstack=att,
        dstack_app_id=payload.get(dstack.APP_ID_OID),
        dstack_usage=usage_text,
    )


def _pem_to_der(data: bytes) -> bytes:
    text = data.decode("ascii", errors="replace")
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----")
    if begin < 0 or end < begin:
        raise RaTlsError("no PEM CERTIFICATE block")
    body = text[begin + len("-----BEGIN CERTIFICATE-----") : end]
    try:
        return base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise RaTlsError(f"PEM: bad base64: {e}") from e
