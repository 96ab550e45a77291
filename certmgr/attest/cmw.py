"""The CMW X.509 extension (RFC 9999) carrying a Linux TSM report: how SEV-SNP evidence travels.

Pure: bytes in, bytes or frozen values out; no I/O.

RFC 9999 ("RATS Conceptual Message Wrapper") defines the extension ``id-pe-cmw``
(``1.3.6.1.5.5.7.1.35``), whose extnValue is the DER encoding of either an OCTET STRING
holding a CBOR-serialised CMW or a UTF8String holding a JSON-serialised one (as the reference
implementation, veraison/cmw ``x509.go``, writes and reads it). A CMW *record* is the array
``[type, value, ?ind]``: ``type`` a media type (text) or CoAP content-format (uint),
``value`` the message bytes (a CBOR byte string; base64url without padding in JSON), ``ind``
the conceptual-message indicator (4: evidence).

The message for a TEE whose report comes from Linux configfs-tsm is the Veraison TSM report,
media type ``application/vnd.veraison.tsm-report+cbor`` (veraison/ratsd ``tokens/
tsm-report.go`` and ``docs/tsm-report.cddl``): a CBOR map with text keys ``"provider"``
(``sev_guest`` for SEV-SNP), ``"outblob"`` (the report) and optionally ``"auxblob"`` (for
``sev_guest`` the extended report's certificate table: VCEK or VLEK, ASK or ASVK, ARK).
The CDDL makes ``provider`` a byte string; ratsd's Go code, which is what runs, writes a
text string: teeproxy writes text and reads both. The ``+json`` media type (a JSON object
with base64url fields) is read too.

teeproxy writes, on an SEV-SNP guest, ``[tsm-report+cbor, <report, certificate table>, 4]``
next to the ``2.23.133.5.4.9`` evidence (which holds the same report and the claims the
report binds): a CMW-aware verifier (Veraison) gets the report and its VCEK chain; an
interoperable RA-TLS one (rats-tls) reads the 2.23.133.5.4.9 extension and ignores this
non-critical one; teeproxy's verifier requires both to carry the same report and uses the
certificate table as collateral.

Collections, CBOR-tagged CMWs and other media types are refused with a clear error.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

import cbor2

from certmgr.attest.claims import strict_loads
from certmgr.attest.der import single
from certmgr.errors import RaTlsError

__all__ = [
    "CMW_OID",
    "IND_EVIDENCE",
    "MAX_CMW_SIZE",
    "TSM_REPORT_CBOR",
    "TSM_REPORT_JSON",
    "TsmReport",
    "decode_extension",
    "encode_extension",
]

CMW_OID: Final = "1.3.6.1.5.5.7.1.35"
TSM_REPORT_CBOR: Final = "application/vnd.veraison.tsm-report+cbor"
TSM_REPORT_JSON: Final = "application/vnd.veraison.tsm-report+json"
IND_EVIDENCE: Final = 4
MAX_CMW_SIZE: Final = 96 * 1024
_KEYS: Final = frozenset({"provider", "outblob", "auxblob", "manifestblob", "service_provider"})


@dataclass(frozen=True, slots=True)
class TsmReport:
    provider: str  # "sev_guest", "tdx_guest", ...
    outblob: bytes
    auxblob: bytes = b""


def _der_octets(data: bytes) -> bytes:
    """DER OCTET STRING (X.690 8.7, definite length, primitive)."""
    n = len(data)
    if n < 0x80:
        head = bytes([n])
    else:
        size = n.to_bytes((n.bit_length() + 7) // 8, "big")
        head = bytes([0x80 | len(size)]) + size
    return b"\x04" + head + data


def encode_extension(report: TsmReport) -> bytes:
    """The id-pe-cmw extnValue: an OCTET STRING of the CBOR record for this TSM report."""
    doc: dict[str, Any] = {"provider": report.provider, "outblob": report.outblob}
    if report.auxblob:
        doc["auxblob"] = report.auxblob
    message = cbor2.dumps(doc, canonical=True)
    value = _der_octets(cbor2.dumps([TSM_REPORT_CBOR, message, IND_EVIDENCE]))
    if len(value) > MAX_CMW_SIZE:
        raise RaTlsError(f"CMW extension too large ({len(value)} bytes)")
    return value


def _cbor(data: bytes, what: str) -> Any:
    return strict_loads(data, f"CMW: {what}")


def _b64url(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise RaTlsError(f"CMW: {what} is not base64url text")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as e:
        raise RaTlsError(f"CMW: {what}: bad base64url: {e}") from e


def _tsm_report(doc: Any, *, json_form: bool) -> TsmReport:
    if not isinstance(doc, dict) or not all(isinstance(k, str) for k in doc):
        raise RaTlsError("CMW: the TSM report is not a map with text keys")
    unknown = set(doc) - _KEYS
    if unknown:
        raise RaTlsError(f"CMW: the TSM report has unknown keys {sorted(unknown)[:4]}")

    def blob(key: str) -> bytes:
        v = doc.get(key, b"" if not json_form else "")
        if json_form:
            return _b64url(v, key) if v else b""
        if not isinstance(v, bytes):
            raise RaTlsError(f"CMW: TSM report {key!r} is not a byte string")
        return v

    provider = doc.get("provider")
    if isinstance(provider, bytes) and not json_form:  # the CDDL's form
        try:
            provider = provider.decode("ascii")
        except UnicodeDecodeError:
            provider = None
    if not isinstance(provider, str) or not 0 < len(provider) <= 64:
        raise RaTlsError("CMW: the TSM report names no provider")
    outblob = blob("outblob")
    if not outblob:
        raise RaTlsError("CMW: the TSM report has no outblob")
    return TsmReport(provider, outblob, blob("auxblob"))


def decode_extension(value: bytes) -> TsmReport:
    """Decode an id-pe-cmw extnValue holding a TSM report record, strictly (size capped
    before decoding). Raises :class:`RaTlsError` and nothing else."""
    if len(value) > MAX_CMW_SIZE:
        raise RaTlsError(f"CMW extension too large ({len(value)} bytes)")
    outer = single(value, "CMW extension")
    if outer.tag == 0x04:  # OCTET STRING: CBOR-serialised CMW
        record = _cbor(outer.value, "record")
        json_record = False
    elif outer.tag == 0x0C:  # UTF8String: JSON-serialised CMW
        try:
            record = json.loads(outer.value.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RaTlsError(f"CMW: malformed JSON: {e}") from e
        json_record = True
    else:
        raise RaTlsError(f"CMW extension is neither OCTET STRING nor UTF8String (tag {outer.tag})")
    if not isinstance(record, list | tuple) or len(record) not in (2, 3):
        raise RaTlsError("CMW: only a record [type, value, ?ind] is supported (no collection)")
    media = record[0]
    message = _b64url(record[1], "value") if json_record else record[1]
    if not isinstance(message, bytes):
        raise RaTlsError("CMW: the record's value is not a byte string")
    if len(record) == 3:
        ind = record[2]
        if type(ind) is not int or ind <= 0 or not ind & IND_EVIDENCE:
            raise RaTlsError("CMW: the record is not marked as evidence")
    if media == TSM_REPORT_CBOR:
        return _tsm_report(_cbor(message, "TSM report"), json_form=False)
    if media == TSM_REPORT_JSON:
        try:
            doc = json.loads(message.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RaTlsError(f"CMW: TSM report: malformed JSON: {e}") from e
        return _tsm_report(doc, json_form=True)
    raise RaTlsError(f"CMW: media type {str(media)[:80]!r} is not a TSM report")
