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
- the quote's report_data is ``SHA-256(claims bytes) || 32 zero bytes``.

The legacy Intel RA-TLS OID ``1.2.840.113741.1337.6`` (the raw SGX quote as the value),
as older Gramine and rats-tls emit it, is read too: report_data[:32] is the SHA-256 of the
key, over the DER SubjectPublicKeyInfo (Gramine) or, for an RSA key, over the PKCS#1
RSAPublicKey (rats-tls); either binds the same key, so both are accepted and the verdict
says which one held.

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
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from certmgr.attest import claims as claims_codec
from certmgr.attest.claims import HASH_ALGS, Claims, parse_claims
from certmgr.errors import RaTlsError

__all__ = [
    "CMW_TAG",
    "GRAMINE_LEGACY_OID",
    "HASH_ALGS",
    "MAX_CERT_SIZE",
    "MAX_EXTENSION_SIZE",
    "RATLS_OID",
    "RaTlsCert",
    "build_certificate",
    "encode_claims",
    "encode_extension",
    "expected_report_data",
    "legacy_binding",
    "legacy_key_hashes",
    "parse_certificate",
    "parse_extension",
    "report_data_for_claims",
]

RATLS_OID = "2.23.133.5.4.9"
GRAMINE_LEGACY_OID = "1.2.840.113741.1337.6"
CMW_TAG = 60000
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
_SIG_ALGS: Mapping[str, hashes.HashAlgorithm] = {
    _ECDSA_SHA256: hashes.SHA256(),
    _ECDSA_SHA384: hashes.SHA384(),
    _RSA_SHA256: hashes.SHA256(),
    _RSA_SHA384: hashes.SHA384(),
}


@dataclass(frozen=True, slots=True)
class RaTlsCert:
    """What a parsed RA-TLS certificate says (its quote is not verified here)."""

    der: bytes
    spki_der: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    format: str  # "tcg-cmw" or "gramine-legacy"
    quote: bytes
    claims_bytes: bytes = b""
    claims: Claims | None = None  # None for the legacy format (no claims)
    self_signature_ok: bool = False

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


def encode_extension(quote: bytes, claims_bytes: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(CMW_TAG, [quote, claims_bytes]))


def _cbor_loads(data: bytes, what: str) -> Any:
    return claims_codec.strict_loads(data, what)


def parse_extension(value: bytes) -> tuple[bytes, bytes, Claims]:
    """Decode a ``2.23.133.5.4.9`` value into (quote, claims bytes, claims), strictly."""
    if len(value) > MAX_EXTENSION_SIZE:
        raise RaTlsError(f"attestation extension too large ({len(value)} bytes)")
    top = _cbor_loads(value, "attestation extension")
    if not isinstance(top, cbor2.CBORTag) or top.tag != CMW_TAG:
        raise RaTlsError(f"attestation extension is not CBOR tag {CMW_TAG}")
    v = top.value
    # cbor2 decodes an array under a tag as a tuple, elsewhere as a list.
    if not (isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, bytes) for x in v)):
        raise RaTlsError("attestation extension must wrap [bstr quote, bstr claims]")
    quote, claims_bytes = v
    return quote, claims_bytes, parse_claims(claims_bytes)


def legacy_key_hashes(spki_der: bytes) -> dict[str, bytes]:
    """What a legacy (1.2.840.113741.1337.6) quote's report_data[:32] may be: SHA-256 of
    the DER SubjectPublicKeyInfo (Gramine) or, for RSA, of the PKCS#1 RSAPublicKey
    (rats-tls: the SPKI's subjectPublicKey BIT STRING content)."""
    out = {"spki-sha256": hashlib.sha256(spki_der).digest()}
    try:
        parts = _children(_read_tlv(spki_der, 0)[0].value)
        alg = _children(_expect(parts[0], 0x30, "algorithm").value)
        if _oid(_expect(alg[0], 0x06, "algorithm").value) == _RSA_ENCRYPTION:
            bits = _expect(parts[1], 0x03, "subjectPublicKey").value
            if bits[:1] == b"\x00":
                out["pkcs1-sha256"] = hashlib.sha256(bits[1:]).digest()
    except (RaTlsError, IndexError):
        pass
    return out


def expected_report_data(cert: RaTlsCert) -> bytes:
    """The report_data a genuine quote in this certificate must carry (64 bytes); for the
    legacy format, the SPKI binding (see :func:`legacy_binding` for the PKCS#1 one)."""
    if cert.format == "gramine-legacy":
        return cert.spki_sha256 + bytes(32)
    return report_data_for_claims(cert.claims_bytes)


def legacy_binding(cert: RaTlsCert, report_data: bytes) -> str | None:
    """Which key hash a legacy certificate's report_data[:32] holds, or None."""
    for name, digest in legacy_key_hashes(cert.spki_der).items():
        if report_data[:32] == digest:
            return name
    return None


def pubkey_hash_matches(cert: RaTlsCert) -> bool:
    """Whether the claims' pubkey-hash is the hash of this certificate's own SPKI."""
    if cert.format == "gramine-legacy":
        return True  # legacy binds the key through report_data directly
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
) -> x509.Certificate:
    """A self-signed RA-TLS certificate (ECDSA P-256, SHA-256) carrying quote and claims."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name[:64])])
    return (
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
        .sign(key, hashes.SHA256())
    )


# -- a bounded DER reader (X.690) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TLV:
    tag: int
    value: bytes
    raw: bytes  # the whole encoding, header included


def _read_tlv(buf: bytes, pos: int) -> tuple[_TLV, int]:
    if pos + 2 > len(buf):
        raise RaTlsError("DER: truncated header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise RaTlsError("DER: multi-byte tags are not used in certificates")
    first = buf[pos + 1]
    hdr = 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise RaTlsError("DER: indefinite length")
    else:
        n = first & 0x7F
        if n > 4 or pos + 2 + n > len(buf):
            raise RaTlsError("DER: bad length")
        # Non-minimal long-form lengths (BER) are tolerated: some RA-TLS libraries emit them.
        length = int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
        hdr += n
    end = pos + hdr + length
    if end > len(buf):
        raise RaTlsError("DER: value runs past its container")
    return _TLV(tag, buf[pos + hdr : end], buf[pos:end]), end


def _children(value: bytes) -> list[_TLV]:
    out: list[_TLV] = []
    pos = 0
    while pos < len(value):
        tlv, pos = _read_tlv(value, pos)
        out.append(tlv)
        if len(out) > 256:
            raise RaTlsError("DER: too many elements")
    return out


def _expect(tlv: _TLV, tag: int, what: str) -> _TLV:
    if tlv.tag != tag:
        raise RaTlsError(f"DER: {what}: expected tag {tag:#x}, got {tlv.tag:#x}")
    return tlv


def _oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise RaTlsError("DER: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    n = 0
    for b in value:
        n = (n << 7) | (b & 0x7F)
        if n.bit_length() > 64:
            raise RaTlsError("DER: OBJECT IDENTIFIER arc too large")
        if not b & 0x80:
            arcs.append(n)
            n = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def _time(tlv: _TLV) -> dt.datetime:
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
    cert_tlv, end = _read_tlv(der, 0)
    _expect(cert_tlv, 0x30, "Certificate")
    if der[end:].strip(b"\x00"):
        raise RaTlsError("trailing data after the certificate")
    parts = _children(cert_tlv.value)
    if len(parts) != 3:
        raise RaTlsError("Certificate must have tbsCertificate, algorithm and signature")
    tbs = _expect(parts[0], 0x30, "tbsCertificate")
    alg = _children(_expect(parts[1], 0x30, "signatureAlgorithm").value)
    if not alg:
        raise RaTlsError("empty signatureAlgorithm")
    alg_oid = _oid(_expect(alg[0], 0x06, "algorithm").value)
    sig = _expect(parts[2], 0x03, "signatureValue").value

    fields = _children(tbs.value)
    i = 0
    if fields and fields[0].tag == 0xA0:  # [0] EXPLICIT version
        i = 1
    if len(fields) < i + 6:
        raise RaTlsError("tbsCertificate too short")
    validity = _children(_expect(fields[i + 3], 0x30, "validity").value)
    if len(validity) != 2:
        raise RaTlsError("validity must hold notBefore and notAfter")
    not_before, not_after = _time(validity[0]), _time(validity[1])
    spki = _expect(fields[i + 5], 0x30, "subjectPublicKeyInfo").raw
    ext_list: list[_TLV] = []
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
            inner = _children(f.value)
            if len(inner) != 1:
                raise RaTlsError("[3] extensions must wrap one SEQUENCE")
            ext_list = _children(_expect(inner[0], 0x30, "extensions").value)
    seen: set[str] = set()
    found: dict[str, bytes] = {}
    for ext in ext_list:
        items = _children(_expect(ext, 0x30, "Extension").value)
        if len(items) not in (2, 3):
            raise RaTlsError("Extension must be (oid, [critical], value)")
        oid = _oid(_expect(items[0], 0x06, "extnID").value)
        if oid in seen:
            # RFC 5280 4.2: "A certificate MUST NOT include more than one instance of a
            # particular extension." Two quotes would let a verifier and a peer disagree.
            raise RaTlsError(f"duplicate extension {oid}")
        seen.add(oid)
        critical = False
        if len(items) == 3:
            crit = _expect(items[1], 0x01, "critical")
            critical = crit.value not in (b"", b"\x00")
        value = _expect(items[-1], 0x04, "extnValue").value
        if oid == RATLS_OID and critical:
            raise RaTlsError(f"extension {RATLS_OID} must not be critical")
        if oid in (RATLS_OID, GRAMINE_LEGACY_OID):
            found[oid] = value
    if len(found) == 2:
        raise RaTlsError("certificate carries both the standard and the legacy quote extension")
    self_ok = _verify_self_signature(spki, tbs.raw, alg_oid, sig)
    if RATLS_OID in found:
        quote, claims_bytes, claims = parse_extension(found[RATLS_OID])
        return RaTlsCert(
            der=cert_tlv.raw,
            spki_der=spki,
            not_before=not_before,
            not_after=not_after,
            format="tcg-cmw",
            quote=quote,
            claims_bytes=claims_bytes,
            claims=claims,
            self_signature_ok=self_ok,
        )
    if GRAMINE_LEGACY_OID in found:
        quote = found[GRAMINE_LEGACY_OID]
        if len(quote) > MAX_EXTENSION_SIZE:
            raise RaTlsError("legacy quote extension too large")
        return RaTlsCert(
            der=cert_tlv.raw,
            spki_der=spki,
            not_before=not_before,
            not_after=not_after,
            format="gramine-legacy",
            quote=quote,
            self_signature_ok=self_ok,
        )
    raise RaTlsError(f"no attestation extension ({RATLS_OID} or {GRAMINE_LEGACY_OID})")


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
