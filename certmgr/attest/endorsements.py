"""The endorsements extension of RA-TLS certificates: a quote's collateral, carried along.

Pure: bytes in, bytes or frozen values out; no I/O. Extension ``2.23.133.5.4.2``
(``tcg-dice-endorsement-manifest``), NOT critical, as the CCC "Interoperable RA-TLS X.509
Cert and Evidence Formats" document (CCC-Attestation/interoperable-ra-tls) defines it for
Intel quotes: the value is the CBOR data item ::

    60000([VERSION, TCB_INFO, TCB_ISSUER_CHAIN, CRL_PCK_CERT, CRL_PCK_PROC_CA,
           CRL_ISSUER_CHAIN_PCK_CERT, QE_ID_INFO, QE_ID_ISSUER_CHAIN, ?CREATION_DATETIME])

in the order of Open Enclave's 9-field ``oe_sgx_endorsements_fields_t``
(openenclave ``include/openenclave/bits/attestation.h``); the tag is the evidence tag of
the quote (60000, as rats-tls ``src/core/dice.c`` writes it and its verifier requires).
Which collateral buffer goes where is settled by both producers that fill this order:
OE ``common/sgx/endorsements.c`` and rats-tls ``dice.c`` put ``pck_crl`` in CRL_PCK_CERT and
``root_ca_crl`` in CRL_PCK_PROC_CA (the CRL the PCK Processor/Platform CA is checked
against, issued by the root). The newer 10-field OE order inserts a root CA CRL issuer
chain after CRL_ISSUER_CHAIN_PCK_CERT; it is neither written nor accepted (it would shift
every later field, and no RA-TLS producer uses it).

The content of each entry is not fixed by any document, and no real certificate with this
extension could be found; rats-tls copies the ``sgx_ql_qve_collateral_t`` buffers of the
quote provider library verbatim. What teeproxy WRITES (and documents in
docs/ATTESTATION.md):

- VERSION: 3 (the ``sgx_ql_qve_collateral_t`` version of the collateral, as rats-tls
  copies it), always encoded as a 4-byte CBOR uint (``1a 00 00 00 03``): rats-tls's
  verifier asserts that width;
- TCB_INFO: the Intel PCS / PCCS response body ``{"tcbInfo":<tcbInfo>,"signature":"<hex>"}``
  followed by one NUL byte, with ``<tcbInfo>`` the exact signed bytes (dcap-qvl keeps them
  and the signature apart; the body carries both); QE_ID_INFO likewise
  ``{"enclaveIdentity":<qeIdentity>,"signature":"<hex>"}`` and a NUL;
- the three issuer chains: PEM text and a NUL (the quote library's NUL-terminated strings);
- the two CRLs: DER, exactly (no NUL: DER delimits itself);
- no CREATION_DATETIME (rats-tls writes none either).

What it ACCEPTS: any uint32 VERSION in any width (rats-tls writes the collateral version:
3 or 0x00010003; OE writes 1), 8 or 9 entries, each a byte string; at most one trailing NUL
on every entry; CRLs as DER, PEM or hex text of the DER; chains as PEM; TCB_INFO and
QE_ID_INFO as the PCS body (exactly its two members). Everything is checked for shape
before it is handed to dcap-qvl, which verifies the signatures over it against Intel's root;
the content is thus as trustworthy as collateral fetched from a PCCS.

SEV-SNP: no producer defines SNP endorsements in this extension, and rats-tls/librats
refuse a certificate whose endorsements do not belong to SGX or TDX evidence; the SNP
certificate table travels in the RFC 9999 CMW extension instead (:mod:`certmgr.attest.cmw`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any, Final

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certmgr.attest.claims import strict_loads
from certmgr.attest.sevsnp import build_cert_table, parse_cert_table
from certmgr.errors import EndorsementsError, QuoteError, RaTlsError

__all__ = [
    "ENDORSEMENTS_OID",
    "INTEL_QUOTE_TAG",
    "INTEL_VERSION",
    "MAX_ENDORSEMENTS_SIZE",
    "MAX_ENTRY_SIZE",
    "SNP_REPORT_TAG",
    "Endorsements",
    "IntelCollateral",
    "compact_cert_table",
    "decode_endorsements",
    "encode_intel_endorsements",
]

ENDORSEMENTS_OID: Final = "2.23.133.5.4.2"
INTEL_QUOTE_TAG: Final = 60000  # rats-tls dice.h OCBR_TAG_EVIDENCE_INTEL_TEE_QUOTE
SNP_REPORT_TAG: Final = 0x1A7504  # rats-tls dice.h OCBR_TAG_EVIDENCE_SEV_SNP
INTEL_VERSION: Final = 3

MAX_ENDORSEMENTS_SIZE: Final = 96 * 1024
"""Largest extension value decoded. Real TDX collateral (tests/data/dcap-qvl) encodes to
about 12 KiB, an SNP certificate table to about 5 KiB; the whole certificate is capped at
128 KiB (:data:`certmgr.attest.ratls.MAX_CERT_SIZE`) anyway."""
MAX_ENTRY_SIZE: Final = 64 * 1024
_MAX_CHAIN_CERTS: Final = 4
_MAX_DATETIME: Final = 64
_SIGNATURE_SIZE: Final = 64  # ECDSA P-256 r || s over the TCB info / QE identity
_WS = re.compile(r"[ \t\n\r]*")


# -- dcap-qvl's collateral, typed -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntelCollateral:
    """dcap-qvl's ``QuoteCollateralV3``, as plain values: chains PEM text, CRLs DER,
    ``tcb_info``/``qe_identity`` the exact signed JSON text, signatures raw (64 bytes).

    dcap-qvl itself is not imported here (a data-plane worker writes this extension and
    never verifies a quote): :func:`certmgr.attest.collateral.dcap_collateral` makes the
    object its verifier takes."""

    pck_crl_issuer_chain: str
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: str
    tcb_info: str
    tcb_info_signature: bytes
    qe_identity_issuer_chain: str
    qe_identity: str
    qe_identity_signature: bytes

    @classmethod
    def from_json(cls, text: str) -> IntelCollateral:
        """dcap-qvl's collateral JSON (``QuoteCollateralV3.to_json``: bytes as hex)."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict):
                raise TypeError("not an object")
            return cls(
                pck_crl_issuer_chain=_str(doc["pck_crl_issuer_chain"]),
                root_ca_crl=bytes.fromhex(_str(doc["root_ca_crl"])),
                pck_crl=bytes.fromhex(_str(doc["pck_crl"])),
                tcb_info_issuer_chain=_str(doc["tcb_info_issuer_chain"]),
                tcb_info=_str(doc["tcb_info"]),
                tcb_info_signature=bytes.fromhex(_str(doc["tcb_info_signature"])),
                qe_identity_issuer_chain=_str(doc["qe_identity_issuer_chain"]),
                qe_identity=_str(doc["qe_identity"]),
                qe_identity_signature=bytes.fromhex(_str(doc["qe_identity_signature"])),
            )
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise EndorsementsError(f"collateral JSON: {e}") from e

    def to_json(self) -> str:
        """The JSON dcap-qvl's ``QuoteCollateralV3.from_json`` reads."""
        return json.dumps(
            {
                "pck_crl_issuer_chain": self.pck_crl_issuer_chain,
                "root_ca_crl": self.root_ca_crl.hex(),
                "pck_crl": self.pck_crl.hex(),
                "tcb_info_issuer_chain": self.tcb_info_issuer_chain,
                "tcb_info": self.tcb_info,
                "tcb_info_signature": self.tcb_info_signature.hex(),
                "qe_identity_issuer_chain": self.qe_identity_issuer_chain,
                "qe_identity": self.qe_identity,
                "qe_identity_signature": self.qe_identity_signature.hex(),
            }
        )

    def next_update(self) -> dt.datetime:
        """The earliest nextUpdate of the TCB info, the QE identity and both CRLs: after it
        a verifier refuses this collateral (dcap-qvl: expired)."""
        times: list[dt.datetime] = []
        try:
            for text in (self.tcb_info, self.qe_identity):
                value = json.loads(text)["nextUpdate"]
                times.append(dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")))
            for der in (self.pck_crl, self.root_ca_crl):
                nu = x509.load_der_x509_crl(der).next_update_utc
                if nu is not None:
                    times.append(nu)
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            raise EndorsementsError(f"collateral: cannot read nextUpdate: {e}") from e
        return min(t if t.tzinfo else t.replace(tzinfo=dt.UTC) for t in times)


def _str(v: object) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {type(v).__name__}")
    return v


@dataclass(frozen=True, slots=True)
class Endorsements:
    """A decoded endorsements extension (Intel quotes: tag 60000)."""

    tag: int
    version: int
    intel: IntelCollateral
    created: str = ""  # CREATION_DATETIME when given (informative, unauthenticated)

    @property
    def kind(self) -> str:
        return "intel"


# -- CBOR, by hand where widths matter -----------------------------------------------------


def _head(major: int, n: int) -> bytes:
    """A minimal CBOR head (RFC 8949 section 3)."""
    if n < 24:
        return bytes([major << 5 | n])
    for ai, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes([major << 5 | ai]) + n.to_bytes(width, "big")
    raise ValueError("CBOR argument too large")


def _uint32(n: int) -> bytes:
    """A CBOR uint always 4 bytes wide (libcbor's ``cbor_build_uint32``)."""
    return b"\x1a" + n.to_bytes(4, "big")


def _bstr(data: bytes) -> bytes:
    return _head(2, len(data)) + data


def _tagged_array(tag: int, items: list[bytes]) -> bytes:
    return _head(6, tag) + _head(4, len(items)) + b"".join(items)


# -- writing -------------------------------------------------------------------------------


def _pcs_body(key: str, signed: str, signature: bytes) -> bytes:
    return f'{{"{key}":{signed},"signature":"{signature.hex()}"}}'.encode() + b"\x00"


def encode_intel_endorsements(c: IntelCollateral) -> bytes:
    """The ``2.23.133.5.4.2`` value for an Intel quote's collateral (module docstring)."""
    entries = [
        _pcs_body("tcbInfo", c.tcb_info, c.tcb_info_signature),
        c.tcb_info_issuer_chain.encode("ascii") + b"\x00",
        c.pck_crl,
        c.root_ca_crl,
        c.pck_crl_issuer_chain.encode("ascii") + b"\x00",
        _pcs_body("enclaveIdentity", c.qe_identity, c.qe_identity_signature),
        c.qe_identity_issuer_chain.encode("ascii") + b"\x00",
    ]
    value = _tagged_array(INTEL_QUOTE_TAG, [_uint32(INTEL_VERSION)] + [_bstr(e) for e in entries])
    if len(value) > MAX_ENDORSEMENTS_SIZE:
        raise EndorsementsError(f"collateral too large for the certificate ({len(value)} bytes)")
    return value


def compact_cert_table(table: bytes) -> bytes:
    """An SEV-SNP certificate table re-laid out without padding (configfs-tsm's ``auxblob``
    is page-sized); every entry kept. Raises :class:`EndorsementsError` when malformed or
    when it holds no entry."""
    try:
        entries = parse_cert_table(table)
    except QuoteError as e:
        raise EndorsementsError(f"SEV-SNP {e}") from e
    if not entries:
        raise EndorsementsError("SEV-SNP certificate table is empty")
    return build_cert_table(entries)


# -- reading -------------------------------------------------------------------------------


def _strip_nul(entry: bytes) -> bytes:
    return entry[:-1] if entry.endswith(b"\x00") else entry


def _text(entry: bytes, what: str) -> str:
    data = _strip_nul(entry)
    if b"\x00" in data:
        raise EndorsementsError(f"endorsements: {what} holds a NUL byte inside")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EndorsementsError(f"endorsements: {what} is not text: {e}") from e


def _chain(entry: bytes, what: str) -> str:
    text = _text(entry, what)
    if not text.isascii() or "-----BEGIN CERTIFICATE-----" not in text:
        raise EndorsementsError(f"endorsements: {what} is not a PEM certificate chain")
    try:
        certs = x509.load_pem_x509_certificates(text.encode("ascii"))
    except ValueError as e:
        raise EndorsementsError(f"endorsements: {what}: {e}") from e
    if not 1 <= len(certs) <= _MAX_CHAIN_CERTS:
        raise EndorsementsError(f"endorsements: {what} holds {len(certs)} certificates")
    return text


def _crl(entry: bytes, what: str) -> bytes:
    """DER of a CRL given as DER (optionally NUL-terminated), PEM, or hex of the DER."""
    data = entry
    if data[:1] == b"\x30":
        data = _strip_nul(data) if _der_length(data) == len(data) - 1 else data
    else:
        text = _text(data, what).strip()
        try:
            if text.startswith("-----BEGIN X509 CRL-----"):
                data = x509.load_pem_x509_crl(text.encode("ascii")).public_bytes(
                    serialization.Encoding.DER
                )
            else:
                data = bytes.fromhex(text)
        except (ValueError, UnicodeEncodeError) as e:
            raise EndorsementsError(f"endorsements: {what} is not DER, PEM or hex: {e}") from e
    if _der_length(data) != len(data):
        raise EndorsementsError(f"endorsements: {what} is not exactly one DER CRL")
    try:
        x509.load_der_x509_crl(data)
    except ValueError as e:
        raise EndorsementsError(f"endorsements: {what}: {e}") from e
    return data


def _der_length(data: bytes) -> int:
    """The length of the DER TLV at the start of ``data`` (header included), or -1."""
    if len(data) < 2 or data[0] != 0x30:
        return -1
    first = data[1]
    if first < 0x80:
        return 2 + first
    n = first & 0x7F
    if not 1 <= n <= 4 or len(data) < 2 + n:
        return -1
    return 2 + n + int.from_bytes(data[2 : 2 + n], "big")


def _skip(text: str, pos: int) -> int:
    m = _WS.match(text, pos)
    return m.end() if m else pos


def _signed_json(entry: bytes, body_key: str, what: str) -> tuple[str, bytes]:
    """(the exact text of ``body_key``'s value, the signature) of a PCS response body
    ``{body_key: {...}, "signature": "<hex>"}``. The value's text is cut out of the body,
    never re-serialised: Intel signs those exact bytes."""
    text = _text(entry, what)
    members: dict[str, tuple[Any, str]] = {}
    decoder = json.JSONDecoder()
    try:
        pos = _skip(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos = _skip(text, pos + 1)
        while True:
            if text[pos : pos + 1] != '"':
                raise ValueError("expected a member name")
            key, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos)
            if text[pos : pos + 1] != ":":
                raise ValueError("expected ':'")
            pos = _skip(text, pos + 1)
            value, end = decoder.raw_decode(text, pos)
            if key in members:
                raise ValueError(f"duplicate member {key!r}")
            members[key] = (value, text[pos:end])
            pos = _skip(text, end)
            if text[pos : pos + 1] == ",":
                pos = _skip(text, pos + 1)
                continue
            if text[pos : pos + 1] == "}":
                pos += 1
                break
            raise ValueError("expected ',' or '}'")
        if _skip(text, pos) != len(text):
            raise ValueError("data after the JSON object")
    except (ValueError, RecursionError) as e:
        raise EndorsementsError(f"endorsements: {what}: {e}") from e
    if set(members) != {body_key, "signature"}:
        raise EndorsementsError(
            f"endorsements: {what} must hold exactly {body_key!r} and 'signature', "
            f"got {sorted(members)}"
        )
    body, body_text = members[body_key]
    sig = members["signature"][0]
    if not isinstance(body, dict):
        raise EndorsementsError(f"endorsements: {what}: {body_key!r} is not an object")
    try:
        signature = bytes.fromhex(sig) if isinstance(sig, str) else b""
    except ValueError:
        signature = b""
    if len(signature) != _SIGNATURE_SIZE:
        raise EndorsementsError(f"endorsements: {what}: signature is not 64 bytes of hex")
    return body_text, signature


def _version(item: object) -> int:
    if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 1 << 32:
        raise EndorsementsError("endorsements: VERSION must be an unsigned 32-bit integer")
    return item


def decode_endorsements(value: bytes) -> Endorsements:
    """Decode a ``2.23.133.5.4.2`` value strictly (size capped before decoding). Raises
    :class:`EndorsementsError` (and nothing else) for anything malformed."""
    if len(value) > MAX_ENDORSEMENTS_SIZE:
        raise EndorsementsError(
            f"endorsements extension too large ({len(value)} > {MAX_ENDORSEMENTS_SIZE} bytes)"
        )
    try:
        top = strict_loads(value, "endorsements")
    except RaTlsError as e:
        raise EndorsementsError(str(e)) from e
    if isinstance(top, cbor2.CBORTag) and top.tag == SNP_REPORT_TAG:
        raise EndorsementsError(
            "endorsements: none are defined for SEV-SNP evidence (teeproxy carries the "
            "certificate table in the id-pe-cmw extension, RFC 9999)"
        )
    if not isinstance(top, cbor2.CBORTag) or top.tag != INTEL_QUOTE_TAG:
        raise EndorsementsError(f"endorsements: not CBOR tag {INTEL_QUOTE_TAG} (Intel quote)")
    items = top.value
    if not isinstance(items, list | tuple):
        raise EndorsementsError("endorsements: the tag must wrap an array")
    if len(items) not in (8, 9):
        raise EndorsementsError(f"endorsements: {len(items)} entries, expected 8 or 9")
    version = _version(items[0])
    entries = items[1:8]
    for i, entry in enumerate(entries, start=1):
        if not isinstance(entry, bytes):
            raise EndorsementsError(f"endorsements: entry {i} is not a byte string")
        if not entry or len(entry) > MAX_ENTRY_SIZE:
            raise EndorsementsError(f"endorsements: entry {i} has {len(entry)} bytes")
    created = ""
    if len(items) == 9:
        raw = items[8]
        if not isinstance(raw, bytes | str) or len(raw) > _MAX_DATETIME:
            raise EndorsementsError("endorsements: CREATION_DATETIME is not a short string")
        created = _text(raw if isinstance(raw, bytes) else raw.encode(), "CREATION_DATETIME")
    tcb_info, tcb_sig = _signed_json(entries[0], "tcbInfo", "TCB_INFO")
    qe_identity, qe_sig = _signed_json(entries[5], "enclaveIdentity", "QE_ID_INFO")
    collateral = IntelCollateral(
        pck_crl_issuer_chain=_chain(entries[4], "CRL_ISSUER_CHAIN_PCK_CERT"),
        root_ca_crl=_crl(entries[3], "CRL_PCK_PROC_CA"),
        pck_crl=_crl(entries[2], "CRL_PCK_CERT"),
        tcb_info_issuer_chain=_chain(entries[1], "TCB_ISSUER_CHAIN"),
        tcb_info=tcb_info,
        tcb_info_signature=tcb_sig,
        qe_identity_issuer_chain=_chain(entries[6], "QE_ID_ISSUER_CHAIN"),
        qe_identity=qe_identity,
        qe_identity_signature=qe_sig,
    )
    return Endorsements(INTEL_QUOTE_TAG, version, intel=collateral, created=created)
