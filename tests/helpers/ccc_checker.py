"""An independent checker of CCC interoperable RA-TLS certificates, written from the spec alone.

Sources (the only ones; no teeproxy code was read to write the rules):

- CCC-Attestation/interoperable-ra-tls ``docs/Interoperable-RA-TLS-cert-edvidence-formats.md``
  at commit ea1df3140afd434a274dd7a43095f9ee230d793b ("the cert spec");
- CCC-Attestation/interoperable-ra-tls ``docs/Interoperable-RA-TLS-SGX-TDX-evidence-formats.md``
  at commit a5090580e84a887d0a2a0b1c48fb65b5f88d51dc ("the SGX/TDX spec");
- the quote layouts it names, Intel's ``sgx_quote_3.h`` / ``sgx_quote_4.h``: header 48 bytes;
  SGX report body 384 bytes with report_data at body offset 320 (quote bytes 368..432); TDX
  TD quote body 584 bytes with report_data at body offset 520 (quote bytes 568..632); then a
  u32 signature-data length, the ECDSA P-256 signature r || s over header || body and the
  attestation key x || y (as transcribed in google/go-tdx-guest ``abi/abi.go`` at commit
  c7c68f5a214109972d7ac75d0d9ff297f4959e99: headerSize 0x30, tdReportDataStart 0x208,
  qeReportDataStart 0x140, signedDataSignature 0x00..0x40, AttestationKey 0x40..0x80);
- X.509 as RFC 5280 section 4.1 defines it, DER as X.690, CBOR as RFC 8949.

Plus teeproxy's simulated quote layout as documented in docs/ATTESTATION.md ("The simulated
provider"): the TDX v4 layout above, QE vendor id ``TEEPROXY-SIM-DEV`` (header bytes 12..28),
and after the signature and attestation key a certification-data type ``0x7E57`` (u16), a u32
size and the data. Such a quote is marked ``simulated``; its attestation key is trusted only
when the caller names it.

Rules checked by :func:`check_certificate`:

1. DER certificate (PEM accepted), X.509 v3, no trailing bytes; both AlgorithmIdentifiers equal
   (RFC 5280 4.1.1.2); self-issued (issuer == subject) and the signature verifies with the
   certificate's own key over the exact TBSCertificate bytes (the cert spec allows CA-signed
   certificates too; this checker handles the self-signed ones only);
2. the validity window holds at the given time (UTCTime and GeneralizedTime both read:
   the Intel SGX SDK writes GeneralizedTime for dates before 2050);
3. after the key only [1], [2], [3], each at most once and in this order (RFC 5280 4.1);
   exactly one extension 2.23.133.5.4.9 (RFC 5280 4.2: no extension twice); its criticality is
   reported, not judged (the cert spec: "should be cleared");
4. its value is a definite-length CBOR tag 60000 (the SGX/TDX spec: Intel TEE quote) wrapping
   a definite-length array of two byte strings ``[quote, claims-buffer]``, nothing after it;
5. the claims buffer is a definite-length CBOR map, text keys, byte-string values, no key
   twice; ``"pubkey-hash"`` present and holding exactly one definite-length CBOR array
   ``[hash-alg-id (uint), hash-value (bstr)]`` with alg 1 / 7 / 8 = sha-256 / sha-384 /
   sha-512 (IANA Named Information; "the verifier ... must support" all three), the value
   being that hash of the DER SubjectPublicKeyInfo; ``"nonce"`` optional (compared when the
   caller expects one); any other claim ignored ("All other custom claims will be ignored");
6. the quote is SGX v3, SGX v4 (tee_type 0) or TDX v4 (tee_type 0x81) and its report_data is
   SHA-256(claims-buffer) followed by zero bytes ("customs-buffer-hash ... is the SHA256 hash
   of the claims-buffer byte string"; the remaining bytes zero);
7. the quote's ECDSA P-256 signature over header || body verifies under the attestation key
   the quote carries, and that key is one of ``trusted_attestation_keys`` when given (for a
   real Intel quote the key's own chain to Intel is NOT checked here: that is collateral);
8. an endorsements extension 2.23.133.5.4.2, if present: tag 60000 around an array of 8 or 9
   entries, a uint version then byte strings.

A structural error (bad DER or CBOR, sizes, missing extension, unknown quote) raises
:class:`Malformed`; a violated rule is named in :attr:`Report.failures`, so that a test can
say exactly which rule a single fault breaks.

Independence: this module imports nothing of certmgr/ or proxy/ (a test checks it). The
CBOR decoder is hand-written (about 60 lines, the major types 0, 2, 3, 4, 5, 6 the format
uses) rather than a library: the specs demand definite-length encodings, which general
decoders (cbor2, PyPI ``cbor``) accept in both forms without saying which; and the one other
pure-Python decoder on PyPI, ``cbor`` 1.0.0, dates from 2016 (RFC 7049). cryptography is used
only for the signature checks (it loads the SubjectPublicKeyInfo, never the certificate:
its X.509 loader refuses Gramine's certificate, whose ECDSA AlgorithmIdentifier carries a NULL
parameter).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

__all__ = [
    "EVIDENCE_OID",
    "Malformed",
    "Report",
    "check_certificate",
    "check_evidence",
    "oid_content",
]

MAX_CERT = 256 * 1024
MAX_CBOR_DEPTH = 4
MAX_CBOR_ITEMS = 256
MAX_DER_DEPTH = 12
MAX_DER_CHILDREN = 512

CMW_TAG = 60000
HASHES = {1: ("sha256", 32), 7: ("sha384", 48), 8: ("sha512", 64)}


class Malformed(ValueError):
    """The input is not structurally an interoperable RA-TLS certificate or evidence."""


def oid_content(dotted: str) -> bytes:
    """The DER content bytes of an OBJECT IDENTIFIER (X.690 8.19): extensions are matched
    on these bytes, never on a decoded dotted string (Gramine writes one extension id that
    decodes to nonsense)."""
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        rest = arc >> 7
        while rest:
            chunk.append(0x80 | (rest & 0x7F))
            rest >>= 7
        out += bytes(reversed(chunk))
    return bytes(out)


EVIDENCE_OID = oid_content("2.23.133.5.4.9")  # tcg-dice-conceptual-message-wrapper
ENDORSEMENT_OID = oid_content("2.23.133.5.4.2")  # tcg-dice-endorsement-manifest
# signatureAlgorithm OIDs (RFC 5758 3.2, RFC 4055 5): (kind, hash)
SIG_ALGS: dict[bytes, tuple[str, hashes.HashAlgorithm]] = {
    oid_content("1.2.840.10045.4.3.2"): ("ecdsa", hashes.SHA256()),
    oid_content("1.2.840.10045.4.3.3"): ("ecdsa", hashes.SHA384()),
    oid_content("1.2.840.10045.4.3.4"): ("ecdsa", hashes.SHA512()),
    oid_content("1.2.840.113549.1.1.11"): ("rsa", hashes.SHA256()),
    oid_content("1.2.840.113549.1.1.12"): ("rsa", hashes.SHA384()),
    oid_content("1.2.840.113549.1.1.13"): ("rsa", hashes.SHA512()),
}

# -- DER (X.690), bounded --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tlv:
    tag: int
    raw: bytes  # the whole TLV
    value: bytes  # the contents


def read_tlv(buf: bytes, pos: int) -> tuple[Tlv, int]:
    """One DER TLV at ``pos``: single-byte tags, definite lengths of at most 4 bytes."""
    if pos + 2 > len(buf):
        raise Malformed("DER: truncated header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise Malformed("DER: multi-byte tags are not used in certificates")
    first = buf[pos + 1]
    start = pos + 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0:
            raise Malformed("DER: indefinite length")
        if n > 4 or start + n > len(buf):
            raise Malformed("DER: bad length of length")
        length = int.from_bytes(buf[start : start + n], "big")
        start += n
    end = start + length
    if end > len(buf):
        raise Malformed("DER: content runs past the end")
    return Tlv(tag, buf[pos:end], buf[start:end]), end


def children(value: bytes) -> list[Tlv]:
    out = []
    pos = 0
    while pos < len(value):
        tlv, pos = read_tlv(value, pos)
        out.append(tlv)
        if len(out) > MAX_DER_CHILDREN:
            raise Malformed("DER: too many elements")
    return out


def expect(tlv: Tlv, tag: int, what: str) -> Tlv:
    if tlv.tag != tag:
        raise Malformed(f"DER: {what} has tag {tlv.tag:#04x}, expected {tag:#04x}")
    return tlv


def read_time(tlv: Tlv) -> dt.datetime:
    """UTCTime ``YYMMDDHHMMSSZ`` or GeneralizedTime ``YYYYMMDDHHMMSSZ`` (RFC 5280 4.1.2.5)."""
    try:
        text = tlv.value.decode("ascii")
        if tlv.tag == 0x17 and len(text) == 13:
            t = dt.datetime.strptime("20" + text, "%Y%m%d%H%M%SZ")
            if t.year >= 2050:  # RFC 5280 4.1.2.5.1: YY >= 50 means 19YY
                t = t.replace(year=t.year - 100)
        elif tlv.tag == 0x18 and len(text) == 15:
            t = dt.datetime.strptime(text, "%Y%m%d%H%M%SZ")
        else:
            raise Malformed(f"DER: time of tag {tlv.tag:#04x} and length {len(text)}")
    except (UnicodeDecodeError, ValueError) as e:
        raise Malformed(f"DER: unreadable time: {e}") from e
    return t.replace(tzinfo=dt.UTC)


# -- CBOR (RFC 8949), definite lengths only, bounded ------------------------------------------


@dataclass(frozen=True, slots=True)
class Tag:
    number: int
    value: Any


def _argument(buf: bytes, pos: int) -> tuple[int, int, int]:
    """(major type, argument, next position) of the data item head at ``pos``."""
    if pos >= len(buf):
        raise Malformed("CBOR: truncated")
    major, info = buf[pos] >> 5, buf[pos] & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    if info > 27:  # 28..30 reserved, 31 indefinite length (RFC 8949 3.2)
        raise Malformed(f"CBOR: additional information {info} (indefinite or reserved)")
    n = 1 << (info - 24)
    if pos + n > len(buf):
        raise Malformed("CBOR: truncated argument")
    return major, int.from_bytes(buf[pos : pos + n], "big"), pos + n


def _item(buf: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > MAX_CBOR_DEPTH:
        raise Malformed("CBOR: nested too deep")
    major, arg, pos = _argument(buf, pos)
    if major == 0:
        return arg, pos
    if major in (2, 3):
        if arg > len(buf) - pos:
            raise Malformed("CBOR: string runs past the end")
        data = buf[pos : pos + arg]
        if major == 2:
            return data, pos + arg
        try:
            return data.decode("utf-8"), pos + arg
        except UnicodeDecodeError as e:
            raise Malformed("CBOR: text string is not UTF-8") from e
    if major == 4:
        if arg > MAX_CBOR_ITEMS:
            raise Malformed("CBOR: array too long")
        items = []
        for _ in range(arg):
            v, pos = _item(buf, pos, depth + 1)
            items.append(v)
        return items, pos
    if major == 5:
        if arg > MAX_CBOR_ITEMS:
            raise Malformed("CBOR: map too long")
        out: dict[Any, Any] = {}
        for _ in range(arg):
            k, pos = _item(buf, pos, depth + 1)
            if not isinstance(k, int | str | bytes):
                raise Malformed("CBOR: map key of an unsupported type")
            if k in out:
                raise Malformed(f"CBOR: map key {k!r} twice")
            out[k], pos = _item(buf, pos, depth + 1)
        return out, pos
    if major == 6:
        v, pos = _item(buf, pos, depth + 1)
        return Tag(arg, v), pos
    raise Malformed(f"CBOR: major type {major} does not occur in this format")


def cbor_decode(buf: bytes) -> Any:
    """Exactly one data item filling ``buf``."""
    value, end = _item(buf, 0, 0)
    if end != len(buf):
        raise Malformed(f"CBOR: {len(buf) - end} bytes after the data item")
    return value


# -- quotes ------------------------------------------------------------------------------------

HEADER = 48
SGX_BODY = 384
TDX_BODY = 584
SIM_VENDOR = b"TEEPROXY-SIM-DEV"
SIM_CERT_TYPE = 0x7E57


@dataclass(frozen=True, slots=True)
class Quote:
    kind: str  # "sgx-quote-v3", "sgx-quote-v4", "tdx-quote-v4"
    report_data: bytes
    signed: bytes  # header || body
    signature: bytes  # r || s
    attestation_key: bytes  # x || y
    simulated: bool


def read_quote(q: bytes) -> Quote:
    if len(q) < HEADER:
        raise Malformed("quote shorter than its header")
    version, key_type, tee_type = struct.unpack_from("<HHI", q, 0)
    if version == 3:
        kind, body = "sgx-quote-v3", SGX_BODY
        if key_type not in (2, 3):  # the SGX/TDX spec: att_key_type = 2 or 3
            raise Malformed(f"SGX quote v3 with attestation key type {key_type}")
    elif version == 4 and tee_type == 0:
        kind, body = "sgx-quote-v4", SGX_BODY
    elif version == 4 and tee_type == 0x81:
        kind, body = "tdx-quote-v4", TDX_BODY
    else:
        raise Malformed(f"quote version {version}, TEE type {tee_type:#x}: not in the spec")
    if key_type != 2:
        raise Malformed(f"attestation key type {key_type}: only ECDSA P-256 (2) is checked")
    end = HEADER + body
    if len(q) < end + 4 + 128:
        raise Malformed("quote truncated before its signature data")
    (sig_len,) = struct.unpack_from("<I", q, end)
    sig_data = q[end + 4 : end + 4 + sig_len]
    if sig_len < 128 or len(sig_data) != sig_len:
        raise Malformed("quote signature data length is wrong")
    cert_type = int.from_bytes(sig_data[128:130], "little") if kind == "tdx-quote-v4" else -1
    return Quote(
        kind=kind,
        report_data=q[end - 64 : end],
        signed=q[:end],
        signature=sig_data[:64],
        attestation_key=sig_data[64:128],
        simulated=q[12:28] == SIM_VENDOR and cert_type == SIM_CERT_TYPE,
    )


def quote_signature_ok(quote: Quote) -> bool:
    try:
        pub = ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + quote.attestation_key
        )
        sig = encode_dss_signature(
            int.from_bytes(quote.signature[:32], "big"), int.from_bytes(quote.signature[32:], "big")
        )
        pub.verify(sig, quote.signed, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


# -- the checks --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    """What the checker found. ``ok`` when no rule failed."""

    failures: tuple[str, ...]
    quote_kind: str
    simulated: bool
    hash_alg: str
    claims: dict[str, bytes]
    attestation_key: bytes
    report_data: bytes
    critical: bool = False
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    spki_der: bytes = b""
    endorsements: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures


def check_evidence(
    quote_bytes: bytes,
    claims_buffer: bytes,
    spki_der: bytes,
    *,
    nonce: bytes | None = None,
    trusted_attestation_keys: tuple[bytes, ...] | None = None,
) -> Report:
    """Rules 5 to 7 over a quote and its claims buffer, for the key ``spki_der``."""
    failures: list[str] = []
    top = cbor_decode(claims_buffer)
    if not isinstance(top, dict) or not all(isinstance(k, str) for k in top):
        raise Malformed("claims-buffer must be a CBOR map with text keys")
    if not all(isinstance(v, bytes) for v in top.values()):
        raise Malformed("every claim value must be a byte string")
    if "pubkey-hash" not in top:
        raise Malformed('claims lack "pubkey-hash"')
    entry = cbor_decode(top["pubkey-hash"])
    if not (isinstance(entry, list) and len(entry) == 2):
        raise Malformed("pubkey-hash must hold the CBOR array [hash-alg-id, hash-value]")
    alg, digest = entry
    if not isinstance(alg, int) or alg not in HASHES:
        raise Malformed(f"hash-alg-id {alg!r} is not 1, 7 or 8")
    name, size = HASHES[alg]
    if not isinstance(digest, bytes) or len(digest) != size:
        raise Malformed(f"hash-value is not a {name} digest")
    if hashlib.new(name, spki_der).digest() != digest:
        failures.append("pubkey-hash")
    if nonce is not None and top.get("nonce") != nonce:
        failures.append("nonce")

    quote = read_quote(quote_bytes)
    if quote.report_data != hashlib.sha256(claims_buffer).digest() + bytes(32):
        failures.append("report-data")
    if not quote_signature_ok(quote):
        failures.append("quote-signature")
    if (
        trusted_attestation_keys is not None
        and quote.attestation_key not in trusted_attestation_keys
    ):
        failures.append("attestation-key-untrusted")
    return Report(
        failures=tuple(failures),
        quote_kind=quote.kind,
        simulated=quote.simulated,
        hash_alg=name,
        claims=dict(top),
        attestation_key=quote.attestation_key,
        report_data=quote.report_data,
        spki_der=spki_der,
    )


def _self_signature_ok(spki_der: bytes, tbs: bytes, alg_oid: bytes, sig_bits: bytes) -> bool:
    kind_hash = SIG_ALGS.get(alg_oid)
    if kind_hash is None or sig_bits[:1] != b"\x00":
        return False
    kind, hash_alg = kind_hash
    try:
        pub = serialization.load_der_public_key(spki_der)
        if kind == "ecdsa" and isinstance(pub, ec.EllipticCurvePublicKey):
            pub.verify(sig_bits[1:], tbs, ec.ECDSA(hash_alg))
        elif kind == "rsa" and isinstance(pub, rsa.RSAPublicKey):
            pub.verify(sig_bits[1:], tbs, padding.PKCS1v15(), hash_alg)
        else:
            return False
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


def _pem_or_der(data: bytes) -> bytes:
    if not data.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
        return data
    text = data.decode("ascii", errors="replace")
    head, tail = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    begin, end = text.find(head), text.find(tail)
    if end < begin:
        raise Malformed("PEM: no END line")
    try:
        return base64.b64decode("".join(text[begin + len(head) : end].split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise Malformed(f"PEM: bad base64: {e}") from e


def _endorsements_ok(value: bytes) -> bool:
    """Rule 8: ``60000([VERSION, 7 or 8 byte strings])``."""
    try:
        top = cbor_decode(value)
    except Malformed:
        return False
    if not (isinstance(top, Tag) and top.number == CMW_TAG and isinstance(top.value, list)):
        return False
    items = top.value
    return (
        len(items) in (8, 9)
        and isinstance(items[0], int)
        and all(isinstance(x, bytes) for x in items[1:])
    )


def check_certificate(
    data: bytes,
    *,
    at: dt.datetime,
    nonce: bytes | None = None,
    trusted_attestation_keys: tuple[bytes, ...] | None = None,
) -> Report:
    """Check every rule of the module docstring on one certificate (PEM or DER)."""
    if len(data) > MAX_CERT:
        raise Malformed(f"certificate of {len(data)} bytes is larger than {MAX_CERT}")
    der = _pem_or_der(bytes(data))
    cert, end = read_tlv(der, 0)
    if end != len(der):
        raise Malformed("bytes after the certificate")
    parts = children(expect(cert, 0x30, "Certificate").value)
    if len(parts) != 3:
        raise Malformed("Certificate is not (tbsCertificate, signatureAlgorithm, signature)")
    tbs = expect(parts[0], 0x30, "tbsCertificate")
    outer_alg = expect(parts[1], 0x30, "signatureAlgorithm")
    sig = expect(parts[2], 0x03, "signatureValue")
    fields = children(tbs.value)
    if len(fields) < 7 or fields[0].tag != 0xA0:
        raise Malformed("tbsCertificate: not a v3 certificate")
    if children(fields[0].value) != [Tlv(0x02, b"\x02\x01\x02", b"\x02")]:
        raise Malformed("tbsCertificate: version is not v3")
    inner_alg = expect(fields[2], 0x30, "signature")
    issuer = expect(fields[3], 0x30, "issuer")
    validity = children(expect(fields[4], 0x30, "validity").value)
    subject = expect(fields[5], 0x30, "subject")
    spki = expect(fields[6], 0x30, "subjectPublicKeyInfo")
    if len(validity) != 2:
        raise Malformed("validity is not (notBefore, notAfter)")
    not_before, not_after = read_time(validity[0]), read_time(validity[1])
    alg_parts = children(outer_alg.value)
    if not alg_parts:
        raise Malformed("empty signatureAlgorithm")
    alg_oid = expect(alg_parts[0], 0x06, "algorithm").value

    failures: list[str] = []
    if inner_alg.raw != outer_alg.raw:
        failures.append("signature-algorithm-mismatch")
    if issuer.raw != subject.raw or not _self_signature_ok(spki.raw, tbs.raw, alg_oid, sig.value):
        failures.append("self-signature")
    if not not_before <= at <= not_after:
        failures.append("validity")

    ext_list: list[Tlv] = []
    rank = 0  # RFC 5280 4.1: issuerUniqueID [1], subjectUniqueID [2], extensions [3]
    for f in fields[7:]:
        r = {0x81: 1, 0xA1: 1, 0x82: 2, 0xA2: 2, 0xA3: 3}.get(f.tag, 0)
        if r <= rank:
            raise Malformed(f"tbsCertificate: field of tag {f.tag:#04x} out of place")
        rank = r
        if f.tag == 0xA3:
            wrapped = children(f.value)
            if len(wrapped) != 1:
                raise Malformed("[3] extensions must wrap one SEQUENCE")
            ext_list = children(expect(wrapped[0], 0x30, "extensions").value)
    found: dict[bytes, tuple[bool, bytes]] = {}
    for ext in ext_list:
        items = children(expect(ext, 0x30, "Extension").value)
        if len(items) not in (2, 3):
            raise Malformed("Extension is not (extnID, [critical], extnValue)")
        oid = expect(items[0], 0x06, "extnID").value
        if oid in found:
            raise Malformed(f"extension {oid.hex()} twice")
        critical = len(items) == 3 and expect(items[1], 0x01, "critical").value != b"\x00"
        found[oid] = (critical, expect(items[-1], 0x04, "extnValue").value)
    if EVIDENCE_OID not in found:
        raise Malformed("no evidence extension 2.23.133.5.4.9")
    critical, value = found[EVIDENCE_OID]

    top = cbor_decode(value)
    if not isinstance(top, Tag) or top.number != CMW_TAG:
        raise Malformed(f"evidence is not CBOR tag {CMW_TAG} (Intel TEE quote)")
    inner = top.value
    if not (
        isinstance(inner, list) and len(inner) == 2 and all(isinstance(x, bytes) for x in inner)
    ):
        raise Malformed("evidence is not [bstr quote, bstr claims-buffer]")
    ev = check_evidence(
        inner[0],
        inner[1],
        spki.raw,
        nonce=nonce,
        trusted_attestation_keys=trusted_attestation_keys,
    )
    failures += ev.failures
    endorsed = ENDORSEMENT_OID in found
    if endorsed and not _endorsements_ok(found[ENDORSEMENT_OID][1]):
        failures.append("endorsements")
    return Report(
        failures=tuple(failures),
        quote_kind=ev.quote_kind,
        simulated=ev.simulated,
        hash_alg=ev.hash_alg,
        claims=ev.claims,
        attestation_key=ev.attestation_key,
        report_data=ev.report_data,
        critical=critical,
        not_before=not_before,
        not_after=not_after,
        spki_der=spki.raw,
        endorsements=endorsed,
    )
