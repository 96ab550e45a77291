"""AWS Nitro Enclaves attestation documents, parsed strictly: COSE_Sign1 over a CBOR map.

Pure: no I/O, no signature or chain check (that is :mod:`certmgr.attest.nitro_verify`).
Anything malformed raises :class:`~certmgr.errors.QuoteError` and nothing else.

Formats followed:

- RFC 9052 section 4.2 ``COSE_Sign1 = [protected: bstr, unprotected: map, payload: bstr,
  signature: bstr]``, tagged (CBOR tag 18) or not; section 3.1: the protected header is a
  serialized map (here ``{1: -35}``, ES384), ``crit`` (2) may only name parameters we
  process, no label appears in both buckets. RFC 9053 section 2.1: an ES384 signature is
  ``r || s``, 48 bytes each.
- AWS "Nitro Enclaves attestation process" (aws/aws-nitro-enclaves-nsm-api
  ``docs/attestation_process.md`` section 3.2.2; the same text is AWS's user guide page
  "Verifying the root of trust"): the payload is a map with exactly the keys
  ``module_id`` (non-empty text), ``digest`` (``"SHA384"``), ``timestamp`` (uint > 0,
  milliseconds since the epoch), ``pcrs`` (1 to 32 entries, index 0..31 -> 48-byte bstr for
  SHA384), ``certificate`` (bstr 1..1024, DER), ``cabundle`` (non-empty array of bstr
  1..1024, root first), and optionally ``public_key`` (bstr 1..1024), ``user_data`` and
  ``nonce`` (bstr 0..512). The NSM writes the optional ones as ``null`` when not asked for
  them (seen in real documents): ``null`` is read as absent; a required field is never null.

Sizes are capped before decoding: the whole document at :data:`MAX_DOCUMENT_SIZE` (the NSM
driver's response buffer is 0x3000 bytes; AWS bounds the payload at 16 KiB), CBOR nesting
at 4, the cabundle at :data:`MAX_CABUNDLE` certificates.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cbor2

from certmgr.attest.measurement import Measurement, ParsedQuote, TeeType
from certmgr.errors import QuoteError

__all__ = [
    "COSE_ALG_ES384",
    "COSE_SIGN1_TAG",
    "MAX_CABUNDLE",
    "MAX_DOCUMENT_SIZE",
    "CoseSign1",
    "NitroDocument",
    "looks_like_cose_sign1",
    "parse_cose_sign1",
    "parse_nitro_document",
    "parse_nitro_quote",
    "sig_structure",
]

MAX_DOCUMENT_SIZE = 17 * 1024
MAX_CABUNDLE = 8
COSE_SIGN1_TAG = 18
COSE_ALG_ES384 = -35
_ES384_SIGNATURE_SIZE = 96
_PCR_SIZE = 48  # digest "SHA384"
_MAX_CERT = 1024
_MAX_USER_DATA = 512
_REQUIRED = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")
_OPTIONAL = ("public_key", "user_data", "nonce")
# COSE header labels (RFC 9052 section 3.1): alg, crit.
_ALG, _CRIT = 1, 2


@dataclass(frozen=True, slots=True)
class CoseSign1:
    """A COSE_Sign1 message; ``protected`` and ``payload`` are the byte strings exactly as
    received (the signature covers those bytes, not a re-encoding of what they decode to)."""

    protected: bytes
    unprotected: Mapping[Any, Any]
    payload: bytes
    signature: bytes
    alg: int


@dataclass(frozen=True, slots=True)
class NitroDocument:
    """A parsed attestation document (nothing of it verified yet)."""

    raw: bytes
    cose: CoseSign1
    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes
    cabundle: tuple[bytes, ...]
    public_key: bytes | None
    user_data: bytes | None
    nonce: bytes | None

    def measurement(self) -> Measurement:
        """PCR0..2 (and 8 and 16 when present); debug when PCR0..2 are all zero, which is
        what the Nitro hypervisor reports for an enclave started in debug mode (AWS user
        guide, "Nitro Enclaves concepts: measurements")."""
        p0, p1, p2 = self.pcrs[0], self.pcrs[1], self.pcrs[2]
        return Measurement(
            tee=TeeType.NITRO,
            debug=not any(p0 + p1 + p2),
            pcr0=p0,
            pcr1=p1,
            pcr2=p2,
            pcr8=self.pcrs.get(8),
            pcr16=self.pcrs.get(16),
        )


def looks_like_cose_sign1(raw: bytes) -> bool:
    """Whether ``raw`` starts like a COSE_Sign1 (an array of 4, or tag 18 and one).

    Intel quotes start with a u16 version 3..5 and SEV-SNP reports with a u32 version 2..5,
    so the first byte tells them apart (0x84 / 0xD2 is neither).
    """
    return raw[:1] == b"\x84" or raw[:2] == b"\xd2\x84"


def _loads(data: bytes, what: str) -> Any:
    """One CBOR item filling ``data`` exactly (``cbor2.loads`` ignores trailing bytes)."""
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(fp, max_depth=4, allow_duplicate_keys=False).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise QuoteError(f"Nitro {what}: malformed CBOR: {e}") from e
    if fp.tell() != len(data):
        raise QuoteError(f"Nitro {what}: malformed CBOR: {len(data) - fp.tell()} trailing bytes")
    return value


def parse_cose_sign1(raw: bytes) -> CoseSign1:
    """The COSE_Sign1 structure of an ES384-signed message (RFC 9052 section 4.2)."""
    if len(raw) > MAX_DOCUMENT_SIZE:
        raise QuoteError(f"Nitro document of {len(raw)} bytes exceeds {MAX_DOCUMENT_SIZE}")
    top = _loads(raw, "document")
    if isinstance(top, cbor2.CBORTag):
        if top.tag != COSE_SIGN1_TAG:
            raise QuoteError(f"Nitro document: CBOR tag {top.tag} is not COSE_Sign1 (18)")
        top = top.value
    # cbor2 decodes an array under a tag as a tuple, elsewhere as a list.
    if not isinstance(top, list | tuple) or len(top) != 4:
        raise QuoteError("Nitro document: COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = top
    if not all(type(x) is bytes for x in (protected, payload, signature)):
        raise QuoteError("Nitro document: protected, payload and signature must be bstr")
    if not isinstance(unprotected, Mapping):
        raise QuoteError("Nitro document: unprotected header must be a map")
    header = _loads(protected, "protected header") if protected else {}
    if not isinstance(header, Mapping):
        raise QuoteError("Nitro document: protected header must be a serialized map")
    if set(header) & set(unprotected):
        raise QuoteError("Nitro document: a header label is both protected and unprotected")
    if _CRIT in unprotected:
        raise QuoteError("Nitro document: crit must be protected (RFC 9052 section 3.1)")
    crit = header.get(_CRIT)
    if crit is not None and (
        not isinstance(crit, list | tuple)
        or not crit
        or any(c != _ALG or type(c) is not int for c in crit)
    ):
        raise QuoteError("Nitro document: crit names header parameters we do not process")
    alg = header.get(_ALG)
    if type(alg) is not int or alg != COSE_ALG_ES384:
        raise QuoteError(f"Nitro document: algorithm {alg!r} is not ES384 (-35)")
    if len(signature) != _ES384_SIGNATURE_SIZE:
        raise QuoteError(f"Nitro document: ES384 signature of {len(signature)} bytes, not 96")
    return CoseSign1(protected, MappingProxyType(dict(unprotected)), payload, signature, alg)


def _head(major: int, n: int) -> bytes:
    """A CBOR item head with the shortest argument (RFC 8949 sections 3 and 4.2.1)."""
    if n < 24:
        return bytes([major << 5 | n])
    for code, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | code]) + struct.pack(fmt, n)
    raise QuoteError("CBOR length too large")


def sig_structure(protected: bytes, payload: bytes, external_aad: bytes = b"") -> bytes:
    """The bytes an ES384 COSE_Sign1 signature is computed over (RFC 9052 section 4.4):
    ``["Signature1", body_protected, external_aad, payload]`` in deterministic CBOR.

    Built here byte by byte rather than by a CBOR encoder so that the exact encoding is
    evident: a definite array of four, a text string and three byte strings, every head
    in its shortest form (RFC 9052 section 9 requires deterministic encoding).
    """
    out = _head(4, 4) + _head(3, 10) + b"Signature1"
    for b in (protected, external_aad, payload):
        out += _head(2, len(b)) + b
    return out


def _bstr(v: Any, what: str, lo: int, hi: int) -> bytes:
    if type(v) is not bytes or not lo <= len(v) <= hi:
        raise QuoteError(f"Nitro document: {what} must be a byte string of {lo} to {hi} bytes")
    return v


def parse_nitro_document(raw: bytes) -> NitroDocument:
    """Parse a COSE_Sign1 attestation document and its payload strictly (see the module
    docstring for the rules)."""
    cose = parse_cose_sign1(raw)
    doc = _loads(cose.payload, "payload")
    if not isinstance(doc, Mapping) or not all(type(k) is str for k in doc):
        raise QuoteError("Nitro document: payload must be a map with text keys")
    unknown = set(doc) - set(_REQUIRED) - set(_OPTIONAL)
    if unknown:
        raise QuoteError(f"Nitro document: unknown fields {sorted(unknown)[:4]}")
    missing = [k for k in _REQUIRED if doc.get(k) is None]
    if missing:
        raise QuoteError(f"Nitro document: missing {', '.join(missing)}")
    module_id, digest, ts = doc["module_id"], doc["digest"], doc["timestamp"]
    if type(module_id) is not str or not module_id or len(module_id) > 256:
        raise QuoteError("Nitro document: module_id must be non-empty text")
    if digest != "SHA384":
        raise QuoteError(f"Nitro document: digest {str(digest)[:20]!r} is not SHA384")
    if type(ts) is not int or not 0 < ts < 1 << 64:
        raise QuoteError("Nitro document: timestamp must be an unsigned integer > 0")
    raw_pcrs = doc["pcrs"]
    if not isinstance(raw_pcrs, Mapping) or not 1 <= len(raw_pcrs) <= 32:
        raise QuoteError("Nitro document: pcrs must be a map of 1 to 32 entries")
    pcrs: dict[int, bytes] = {}
    for idx, value in raw_pcrs.items():
        if type(idx) is not int or not 0 <= idx < 32:
            raise QuoteError("Nitro document: a PCR index is not an integer in 0..31")
        pcrs[idx] = _bstr(value, f"PCR{idx}", _PCR_SIZE, _PCR_SIZE)
    for idx in (0, 1, 2):
        if idx not in pcrs:
            raise QuoteError(f"Nitro document: PCR{idx} is missing")
    cabundle = doc["cabundle"]
    if not isinstance(cabundle, list | tuple) or not 1 <= len(cabundle) <= MAX_CABUNDLE:
        raise QuoteError(f"Nitro document: cabundle must hold 1 to {MAX_CABUNDLE} certificates")
    optional = {
        "public_key": (1, _MAX_CERT),
        "user_data": (0, _MAX_USER_DATA),
        "nonce": (0, _MAX_USER_DATA),
    }
    opt: dict[str, bytes | None] = {
        k: None if doc.get(k) is None else _bstr(doc[k], k, lo, hi)
        for k, (lo, hi) in optional.items()
    }
    return NitroDocument(
        raw=bytes(raw),
        cose=cose,
        module_id=module_id,
        digest=digest,
        timestamp_ms=ts,
        pcrs=MappingProxyType(dict(sorted(pcrs.items()))),
        certificate=_bstr(doc["certificate"], "certificate", 1, _MAX_CERT),
        cabundle=tuple(_bstr(c, "cabundle entry", 1, _MAX_CERT) for c in cabundle),
        public_key=opt["public_key"],
        user_data=opt["user_data"],
        nonce=opt["nonce"],
    )


def parse_nitro_quote(raw: bytes) -> ParsedQuote:
    """The document as a :class:`ParsedQuote`: report_data is ``user_data`` (empty when
    absent; only 64 bytes can bind anything), ``signed`` the Sig_structure."""
    doc = parse_nitro_document(raw)
    return ParsedQuote(
        raw=doc.raw,
        tee=TeeType.NITRO,
        version=1,
        measurement=doc.measurement(),
        report_data=doc.user_data or b"",
        signed=sig_structure(doc.cose.protected, doc.cose.payload),
        signature=doc.cose.signature,
    )
