"""dstack RA-TLS certificates (Dstack-TEE/dstack): their extensions decoded, their rules checked.

Pure: no I/O. Formats, as dstack writes and reads them (``ra-tls/src/cert.rs``,
``ra-tls/src/attestation.rs``, ``dstack-attest/src/attestation.rs`` and ``v1.rs``,
``cc-eventlog/src/runtime_events.rs``; checked on dstack's own verifier fixtures, see
tests/data/ratls/dstack/README.txt):

- extensions under ``1.3.6.1.4.1.62397.1``, each value a DER OCTET STRING *inside* the
  extnValue OCTET STRING: ``.1`` the raw TDX quote, ``.2`` the event log (JSON list of
  ``{imr, event_type, digest, event, event_payload}``, bytes in hex), ``.3`` the app id
  (raw bytes), ``.4`` the certificate usage (UTF-8, e.g. ``app:custom``), ``.8`` the whole
  attestation, which supersedes ``.1`` and ``.2`` when present;
- ``.8`` is either SCALE ``VersionedAttestation::V0`` (first byte 0x00) or the "v1"
  MessagePack map ``{version: 1, platform: {kind, data}, stack: {kind, data}}`` (first byte a
  fixmap, 0x80..0x8f) in which byte vectors may be arrays of integers;
- the quote's report_data is ``SHA-512(b"ratls-cert:" || SubjectPublicKeyInfo DER)``, all 64
  bytes (``QuoteContentType::RaTlsCert``);
- RTMR3 is the SHA-384 fold, from 48 zero bytes, of the runtime events' digests, each
  ``SHA-384(le32(0x08000001) || ":" || event || ":" || payload)``;
- MRCONFIGID, when not all zero, is ``0x01 || compose-hash || 15 zero bytes`` (version 1);
  versions 2 and 3 hash more than the compose hash and are reported, not checked;
- the app id is the ``app-id`` runtime event (20 bytes; ``compose-hash[:20]`` without a KMS).

Everything malformed raises :class:`certmgr.errors.RaTlsError`. :func:`check` makes the
checks dstack's verifier makes besides the quote's own verification (which stays
:mod:`certmgr.attest.verify`'s job). DIP-1 report_data (a key named in a GetQuote answer)
is :mod:`certmgr.attest.dip1`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from certmgr.attest.der import expect, single
from certmgr.errors import RaTlsError

__all__ = [
    "APP_ID_OID",
    "ATTESTATION_OID",
    "EVENT_LOG_OID",
    "MAX_GET_QUOTE_RESPONSE",
    "OID_ARC",
    "RUNTIME_EVENT_TYPE",
    "TDX_QUOTE_OID",
    "USAGE_OID",
    "DstackAttestation",
    "DstackCheck",
    "DstackEvent",
    "check",
    "check_nitro",
    "decode_attestation",
    "event_digest",
    "from_classic",
    "looks_like_get_quote",
    "looks_like_scale_attestation",
    "nitro_image_hash",
    "parse_get_quote_response",
    "ratls_report_data",
    "replay_rtmr",
    "unwrap_octets",
]

OID_ARC = "1.3.6.1.4.1.62397.1"
TDX_QUOTE_OID = OID_ARC + ".1"
EVENT_LOG_OID = OID_ARC + ".2"
APP_ID_OID = OID_ARC + ".3"
USAGE_OID = OID_ARC + ".4"
ATTESTATION_OID = OID_ARC + ".8"
OIDS = frozenset({TDX_QUOTE_OID, EVENT_LOG_OID, APP_ID_OID, USAGE_OID, ATTESTATION_OID})

RUNTIME_EVENT_TYPE = 0x08000001
"""dstack's event type for RTMR3 runtime events (not a TCG-defined type)."""

MAX_EVENTS = 1024
MAX_TEXT = 64 * 1024
_RATLS_CERT_PREFIX = b"ratls-cert:"
_APP_INFO = frozenset({"app-id", "compose-hash", "instance-id", "key-provider"})
_PLATFORMS = frozenset({"tdx", "gcp-tdx"})  # the ones carrying a TDX quote + event log
_SCALE_TDX, _SCALE_NITRO = 0, 2
MAX_GET_QUOTE_RESPONSE = 1024 * 1024


@dataclass(frozen=True, slots=True)
class DstackEvent:
    imr: int  # zero-based: 3 is RTMR3
    event_type: int
    digest: bytes
    event: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class DstackAttestation:
    """What a dstack certificate's attestation carries (nothing of it is verified here)."""

    encoding: str  # "scale-v0", "msgpack-v1", "classic" (.1.1 + .1.2) or "get-quote" (JSON)
    platform: str  # "tdx", "gcp-tdx" or "nitro" (quote = the NSM attestation document)
    quote: bytes
    event_log: tuple[DstackEvent, ...]
    runtime_events: tuple[tuple[str, bytes], ...]
    report_data: bytes | None  # the copy in the attestation (None in the classic form)
    config: str = ""


def ratls_report_data(spki_der: bytes) -> bytes:
    """The report_data of a dstack RA-TLS certificate's quote: SHA-512("ratls-cert:" || SPKI)."""
    return hashlib.sha512(_RATLS_CERT_PREFIX + spki_der).digest()


def event_digest(name: str, payload: bytes) -> bytes:
    """A runtime event's RTMR3 digest (dstack's version-1 rule)."""
    head = RUNTIME_EVENT_TYPE.to_bytes(4, "little") + b":" + name.encode() + b":"
    return hashlib.sha384(head + payload).digest()


def replay_rtmr(digests: Sequence[bytes]) -> bytes:
    mr = bytes(48)
    for d in digests:
        mr = hashlib.sha384(mr + d).digest()
    return mr


def unwrap_octets(value: bytes) -> bytes:
    """The payload of a dstack extension: the DER OCTET STRING inside the extnValue."""
    try:
        return expect(single(value, "dstack extension"), 0x04, "dstack extension").value
    except RaTlsError as e:
        raise RaTlsError(f"dstack extension: value is not one DER OCTET STRING ({e})") from e


# -- SCALE (parity-scale-codec) --------------------------------------------------------------


class _Scale:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise RaTlsError("dstack attestation: SCALE data truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def compact(self) -> int:
        b0 = self.take(1)[0]
        mode = b0 & 3
        if mode == 0:
            return b0 >> 2
        if mode == 1:
            return (b0 | self.take(1)[0] << 8) >> 2
        if mode == 2:
            return int.from_bytes(bytes([b0]) + self.take(3), "little") >> 2
        n = (b0 >> 2) + 4
        if n > 8:
            raise RaTlsError("dstack attestation: SCALE compact integer too large")
        return int.from_bytes(self.take(n), "little")

    def count(self) -> int:
        n = self.compact()
        if n > MAX_EVENTS or n > len(self.buf) - self.pos:
            raise RaTlsError(f"dstack attestation: list of {n} entries")
        return n

    def vec(self) -> bytes:
        return self.take(self.compact())

    def text(self) -> str:
        raw = self.vec()
        if len(raw) > MAX_TEXT:
            raise RaTlsError("dstack attestation: string too long")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise RaTlsError(f"dstack attestation: string is not UTF-8: {e}") from e


def _decode_scale(data: bytes) -> DstackAttestation:
    r = _Scale(data)
    if r.u8() != 0:
        raise RaTlsError("dstack attestation: unknown VersionedAttestation variant")
    variant = r.u8()
    # AttestationQuote: DstackTdx(TdxQuote) = 0, DstackNitroEnclave(DstackNitroQuote) = 2
    # (dstack-attest's test pins these discriminants); GCP TDX and SEV-SNP are not read.
    if variant not in (_SCALE_TDX, _SCALE_NITRO):
        raise RaTlsError(
            f"dstack attestation: quote variant {variant} is not supported (TDX 0, Nitro 2)"
        )
    quote = r.vec()
    log = []
    if variant == _SCALE_TDX:
        for _ in range(r.count()):
            imr, etype, digest = r.u32(), r.u32(), r.vec()
            log.append(DstackEvent(imr, etype, digest, r.text(), r.vec()))
    runtime = tuple((r.text(), r.vec()) for _ in range(r.count()))
    report_data = r.take(64)
    config = r.text()
    if r.pos != len(data):
        raise RaTlsError(f"dstack attestation: {len(data) - r.pos} trailing bytes")
    platform = "tdx" if variant == _SCALE_TDX else "nitro"
    return DstackAttestation("scale-v0", platform, quote, tuple(log), runtime, report_data, config)


# -- MessagePack "v1" --------------------------------------------------------------------------


def _bytes(v: Any, what: str) -> bytes:
    """rmp-serde writes ``Vec<u8>`` without serde_bytes as an array of integers."""
    if isinstance(v, bytes):
        return v
    if isinstance(v, list) and all(type(x) is int and 0 <= x <= 255 for x in v):
        return bytes(v)
    raise RaTlsError(f"dstack attestation: {what} is not a byte string")


def _field(m: Any, key: str, what: str) -> Any:
    if not isinstance(m, Mapping) or key not in m:
        raise RaTlsError(f"dstack attestation: {what} lacks {key!r}")
    return m[key]


def _int(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < 2**32:
        raise RaTlsError(f"dstack attestation: {what} is not a u32")
    return v


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or len(v) > MAX_TEXT:
        raise RaTlsError(f"dstack attestation: {what} is not a string")
    return v


def _list(v: Any, what: str) -> list[Any]:
    if not isinstance(v, list) or len(v) > MAX_EVENTS:
        raise RaTlsError(f"dstack attestation: {what} is not a list of at most {MAX_EVENTS}")
    return v


def _decode_msgpack(data: bytes) -> DstackAttestation:
    # Only a dstack v1 certificate needs it: a worker reading its own RA-TLS certificate never.
    import msgpack  # type: ignore[import-untyped]  # noqa: PLC0415 - dstack v1 only

    try:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise RaTlsError(f"dstack attestation: malformed MessagePack: {e}") from e
    if _field(doc, "version", "attestation") != 1:
        raise RaTlsError("dstack attestation: MessagePack attestation version is not 1")
    platform, stack = _field(doc, "platform", "attestation"), _field(doc, "stack", "attestation")
    kind = _field(platform, "kind", "platform")
    if kind not in _PLATFORMS:
        raise RaTlsError(f"dstack attestation: platform {str(kind)[:40]!r} is not supported")
    if _field(stack, "kind", "stack") not in ("dstack", "dstack-pod"):
        raise RaTlsError("dstack attestation: unknown stack kind")
    pdata, sdata = _field(platform, "data", "platform"), _field(stack, "data", "stack")
    log = tuple(
        DstackEvent(
            _int(_field(e, "imr", "event"), "imr"),
            _int(_field(e, "event_type", "event"), "event_type"),
            _bytes(_field(e, "digest", "event"), "digest"),
            _str(_field(e, "event", "event"), "event"),
            _bytes(_field(e, "event_payload", "event"), "event_payload"),
        )
        for e in _list(_field(pdata, "event_log", "platform data"), "event_log")
    )
    runtime = tuple(
        (
            _str(_field(e, "event", "runtime event"), "event"),
            _bytes(_field(e, "payload", "runtime event"), "payload"),
        )
        for e in _list(_field(sdata, "runtime_events", "stack data"), "runtime_events")
    )
    report_data = _bytes(_field(sdata, "report_data", "stack data"), "report_data")
    if len(report_data) != 64:
        raise RaTlsError("dstack attestation: report_data is not 64 bytes")
    return DstackAttestation(
        "msgpack-v1",
        str(kind),
        _bytes(_field(pdata, "quote", "platform data"), "quote"),
        log,
        runtime,
        report_data,
        _str(sdata.get("config", ""), "config"),
    )


def decode_attestation(data: bytes) -> DstackAttestation:
    """Decode a ``.1.8`` payload (SCALE V0 or MessagePack v1)."""
    if not data:
        raise RaTlsError("dstack attestation: empty")
    if data[0] == 0x00:
        return _decode_scale(data)
    if 0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF):
        return _decode_msgpack(data)
    raise RaTlsError(f"dstack attestation: unknown encoding (first byte {data[0]:#04x})")


def from_classic(quote: bytes, event_log_json: bytes | None) -> DstackAttestation:
    """The classic form: ``.1.1`` quote and the optional ``.1.2`` JSON event log."""
    log: list[DstackEvent] = []
    if event_log_json is not None:
        if event_log_json.startswith(b"ELGZv1"):
            raise RaTlsError("dstack event log: the compressed (ELGZv1) form is not supported")
        try:
            entries = json.loads(event_log_json)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise RaTlsError(f"dstack event log: malformed JSON: {e}") from e
        for entry in _list(entries, "event log"):
            digest_hex = _str(_field(entry, "digest", "event"), "digest")
            payload_hex = _str(_field(entry, "event_payload", "event"), "payload")
            try:
                digest, payload = bytes.fromhex(digest_hex), bytes.fromhex(payload_hex)
            except ValueError as err:
                raise RaTlsError(f"dstack event log: bytes are not hex: {err}") from err
            log.append(
                DstackEvent(
                    _int(_field(entry, "imr", "event"), "imr"),
                    _int(_field(entry, "event_type", "event"), "event_type"),
                    digest,
                    _str(_field(entry, "event", "event"), "event"),
                    payload,
                )
            )
    runtime = tuple((e.event, e.payload) for e in log if e.imr == 3)
    return DstackAttestation("classic", "tdx", quote, tuple(log), runtime, None)


# -- checks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DstackCheck:
    """The outcome of :func:`check`: failures as (check, message), and what the log says."""

    failures: tuple[tuple[str, str], ...]
    details: Mapping[str, Any]


def _config_details(config: str) -> dict[str, Any]:
    try:
        doc = json.loads(config) if config else {}
    except (ValueError, RecursionError):
        return {"config": "unparsed"}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {}
    for key in ("os_image_hash", "image"):
        if isinstance(doc.get(key), str):
            out[key] = doc[key][:200]
    return out


def check(
    att: DstackAttestation,
    *,
    quote_report_data: bytes,
    rt_mr3: bytes,
    mr_config_id: bytes,
    spki_der: bytes | None = None,
    expected_report_data: bytes | None = None,
    app_id_extension: bytes | None = None,
) -> DstackCheck:
    """dstack's rules on evidence whose TDX quote parsed (its genuineness is checked apart).

    Checks: ``binding`` (with ``spki_der``, a certificate's key: the quote's report_data is
    the SHA-512 rule over it; with ``expected_report_data``, a GetQuote answer: the quote's
    report_data is exactly what the caller asked for; either way the attestation's own copy
    is the quote's), ``event-log`` (RTMR3 replays from the runtime events, each event-log
    digest is its event's), ``mr-config-id`` (version 1 names the compose hash) and
    ``app-id`` (the certificate's app-id extension is the measured one).
    """
    fails: list[tuple[str, str]] = []
    if spki_der is not None:
        if not hmac.compare_digest(quote_report_data, ratls_report_data(spki_der)):
            fails.append(("binding", 'report_data is not SHA-512("ratls-cert:" || SPKI)'))
    elif expected_report_data is not None and not hmac.compare_digest(
        quote_report_data, expected_report_data
    ):
        fails.append(("binding", "the quote's report_data is not the one asked for"))
    if att.report_data is not None and not hmac.compare_digest(att.report_data, quote_report_data):
        fails.append(("binding", "the attestation's report_data is not the quote's"))
    for e in att.event_log:
        if e.imr != 3 or not e.digest:
            continue  # boot events are not replayable from a stripped log; empty = stripped
        if e.event_type != RUNTIME_EVENT_TYPE:
            fails.append(("event-log", f"RTMR3 event {e.event[:40]!r} has type {e.event_type:#x}"))
        elif e.digest != event_digest(e.event, e.payload):
            fails.append(("event-log", f"event {e.event[:40]!r}: digest is not its content's"))
    replayed = replay_rtmr([event_digest(name, payload) for name, payload in att.runtime_events])
    if not hmac.compare_digest(replayed, rt_mr3):
        fails.append(("event-log", "RTMR3 does not replay from the runtime events"))
    # The app's identity is what was measured before "system-ready" (dstack's decode_app_info
    # reads no further); later events are the app's own, and may reuse any name.
    events: dict[str, bytes] = {}
    for name, payload in att.runtime_events:
        if name == "system-ready":
            break
        if name in events and name in _APP_INFO:
            fails.append(("event-log", f"event {name!r} is measured twice"))
        events.setdefault(name, payload)
    compose = events.get("compose-hash")
    app_id = events.get("app-id")
    version = mr_config_id[0] if mr_config_id and any(mr_config_id) else 0
    if version == 1 and (
        compose is None or mr_config_id != b"\x01" + compose + bytes(47 - len(compose))
    ):
        fails.append(("mr-config-id", "MRCONFIGID (version 1) does not name the compose hash"))
    if app_id_extension is not None and app_id_extension != app_id:
        fails.append(("app-id", "the certificate's app id is not the measured app-id event"))
    details: dict[str, Any] = {
        "encoding": att.encoding,
        "platform": att.platform,
        "rtmr3_replayed": replayed.hex(),
        "mr_config_id_version": version,
        "mr_config_id_checked": version in (0, 1),
        "runtime_events": [{"event": n, "payload": p.hex()} for n, p in att.runtime_events],
        **_config_details(att.config),
    }
    for key, name in (("compose_hash", "compose-hash"), ("instance_id", "instance-id")):
        if name in events:
            details[key] = events[name].hex()
    if app_id is not None:
        details["app_id"] = app_id.hex()
    if "key-provider" in events:
        details["key_provider"] = events["key-provider"].decode("utf-8", "replace")[:200]
    return DstackCheck(tuple(fails), details)


# -- Nitro Enclaves under dstack --------------------------------------------------------------


def nitro_image_hash(pcr0: bytes, pcr1: bytes, pcr2: bytes) -> bytes:
    """dstack's ``os_image_hash`` of a Nitro enclave: SHA-256(PCR0 || PCR1 || PCR2), all
    zero for a debug enclave (whose PCRs are zero) (``DstackNitroQuote::decode_image_hash``)."""
    if not any(pcr0 + pcr1 + pcr2):
        return bytes(32)
    return hashlib.sha256(pcr0 + pcr1 + pcr2).digest()


def check_nitro(
    att: DstackAttestation,
    *,
    user_data: bytes | None,
    pcrs: tuple[bytes, bytes, bytes],
    spki_der: bytes | None = None,
) -> DstackCheck:
    """dstack's rules on a Nitro attestation (the NSM document's own verification is apart).

    ``binding``: the NSM document's ``user_data`` is the attestation's report_data (all 64
    bytes, dstack's ``verify_with_time``) and, with ``spki_der``, that is the SHA-512 rule
    over the certificate's key; ``config``: the VM config's ``os_image_hash``, when given,
    is SHA-256(PCR0 || PCR1 || PCR2). dstack extends no register with runtime events on
    Nitro, so they (``app-id`` and the like) are reported as not measured.
    """
    fails: list[tuple[str, str]] = []
    if att.report_data is None or user_data is None:
        fails.append(("binding", "the NSM document or the attestation has no report_data"))
    elif not hmac.compare_digest(att.report_data, user_data):
        fails.append(("binding", "the NSM document's user_data is not the attestation's"))
    elif spki_der is not None and not hmac.compare_digest(user_data, ratls_report_data(spki_der)):
        fails.append(("binding", 'report_data is not SHA-512("ratls-cert:" || SPKI)'))
    image_hash = nitro_image_hash(*pcrs).hex()
    config = _config_details(att.config)
    if "os_image_hash" in config and config["os_image_hash"] != image_hash:
        fails.append(("config", "os_image_hash in the VM config is not SHA-256(PCR0..2)"))
    details: dict[str, Any] = {
        "encoding": att.encoding,
        "platform": att.platform,
        "os_image_hash": image_hash,
        "runtime_events_measured": False,
        "runtime_events": [{"event": n, "payload": p.hex()} for n, p in att.runtime_events],
    }
    return DstackCheck(tuple(fails), details)


# -- GetQuote answers ------------------------------------------------------------------------


def looks_like_get_quote(raw: bytes) -> bool:
    """Whether ``raw`` is JSON text (a guest agent's GetQuote answer starts with ``{``)."""
    return raw.lstrip()[:1] == b"{"


def looks_like_scale_attestation(raw: bytes) -> bool:
    """Whether ``raw`` starts like SCALE ``VersionedAttestation::V0`` of a TDX or Nitro quote
    (0x00, then 0x00 or 0x02); no Intel quote, SEV-SNP report or COSE_Sign1 starts so."""
    return len(raw) > 2 and raw[0] == 0 and raw[1] in (_SCALE_TDX, _SCALE_NITRO)


def _hex_field(doc: Mapping[str, Any], key: str, *, required: bool) -> bytes | None:
    v = doc.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str):
        raise RaTlsError(f"dstack GetQuote: {key!r} must be a hex string")
    try:
        return bytes.fromhex(v.removeprefix("0x"))
    except ValueError as e:
        raise RaTlsError(f"dstack GetQuote: {key!r} is not hex") from e


def parse_get_quote_response(body: bytes) -> DstackAttestation:
    """A guest agent's ``GetQuote`` answer (``{"quote": hex, "event_log": json text,
    "report_data": hex, "vm_config": json text}``; dstack ``guest-agent/rpc``
    ``GetQuoteResponse``), size-capped before decoding. RTMR3 events come from the event log
    (its ``imr`` 3 entries); ``report_data``, when present, must be 64 bytes."""
    if len(body) > MAX_GET_QUOTE_RESPONSE:
        raise RaTlsError("dstack GetQuote: answer too large")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise RaTlsError(f"dstack GetQuote: malformed JSON: {e}") from e
    if not isinstance(doc, dict):
        raise RaTlsError("dstack GetQuote: answer is not an object")
    quote = _hex_field(doc, "quote", required=True)
    report_data = _hex_field(doc, "report_data", required=False)
    if report_data is not None and len(report_data) != 64:
        raise RaTlsError("dstack GetQuote: report_data is not 64 bytes")
    event_log = doc.get("event_log", "")
    vm_config = doc.get("vm_config", "")
    if not isinstance(event_log, str) or not isinstance(vm_config, str):
        raise RaTlsError("dstack GetQuote: event_log and vm_config must be JSON text")
    if not quote:
        raise RaTlsError("dstack GetQuote: empty quote")
    classic = from_classic(quote, event_log.encode() if event_log else None)
    return DstackAttestation(
        "get-quote",
        "tdx",
        quote,
        classic.event_log,
        classic.runtime_events,
        report_data,
        _str(vm_config, "vm_config"),
    )
