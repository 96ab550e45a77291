"""certmgr.attest.dstack: dstack's own certificates decoded, its rules checked, bad input refused.

The real payloads are the ``.1.8`` extensions of dstack's verifier fixtures
(tests/data/ratls/dstack/README.txt: SCALE V0 in the v0 certificates, MessagePack v1 in the
v1 one); the expected values are the README's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest import dip1, dstack
from certmgr.attest.intel import parse_quote
from certmgr.errors import RaTlsError
from tests.helpers.attest import ratls_artifact

V0 = "dstack/tdx-lite-v0-get-tls-key.pem"
V1 = "dstack/tdx-lite-v1-issue-cert.leaf.pem"
COMPOSE_HASH = bytes.fromhex("53226fcd7b6bc7ea979b0a550bf49cad993f28e2370169a9510e56c90b3029dc")
EVENTS = [
    "system-preparing",
    "app-id",
    "compose-hash",
    "gpu-policy-hash",
    "instance-id",
    "boot-mr-done",
    "key-provider",
    "storage-fs",
    "system-ready",
]


def _cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ratls_artifact(name))


def _payload(name: str, oid: str = dstack.ATTESTATION_OID) -> bytes:
    ext = _cert(name).extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    return dstack.unwrap_octets(ext.value.value)  # type: ignore[attr-defined]


def _spki(name: str) -> bytes:
    return (
        _cert(name)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _check(att: dstack.DstackAttestation, name: str, **over: object) -> dstack.DstackCheck:
    q = parse_quote(att.quote)
    args: dict[str, object] = {
        "spki_der": _spki(name),
        "quote_report_data": q.report_data,
        "rt_mr3": q.measurement.rt_mr3,
        "mr_config_id": q.measurement.mr_config_id,
        "app_id_extension": _payload(name, dstack.APP_ID_OID),
    }
    args.update(over)
    return dstack.check(att, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "encoding"), [(V0, "scale-v0"), (V1, "msgpack-v1")])
def test_real_attestations_decode_and_check(name: str, encoding: str) -> None:
    att = dstack.decode_attestation(_payload(name))
    assert (att.encoding, att.platform) == (encoding, "tdx")
    assert len(att.quote) == 5006
    assert [n for n, _ in att.runtime_events] == EVENTS
    assert att.report_data == dstack.ratls_report_data(_spki(name))
    assert json.loads(att.config)["os_image_hash"].startswith("98a33946")
    res = _check(att, name)
    assert res.failures == ()
    assert res.details["compose_hash"] == COMPOSE_HASH.hex()
    assert res.details["app_id"] == COMPOSE_HASH[:20].hex()  # no KMS: compose_hash[:20]


def test_event_digest_is_dstacks() -> None:
    """The first RTMR3 event of the v0 fixture, as the event log records its digest."""
    att = dstack.decode_attestation(_payload(V0))
    first = next(e for e in att.event_log if e.imr == 3)
    assert first.event == "system-preparing"
    assert first.digest.hex().startswith("f9974020ef507068")
    assert dstack.event_digest("system-preparing", b"") == first.digest
    assert first.event_type == dstack.RUNTIME_EVENT_TYPE


def test_report_data_rule() -> None:
    assert dstack.ratls_report_data(b"k") == hashlib.sha512(b"ratls-cert:k").digest()


def test_classic_form_from_the_real_quote_and_log() -> None:
    """The .1.1 quote + .1.2 JSON event log form (cert.rs writes it for TDX): the real
    quote, and the real event log in dstack's JSON shape (bytes in hex)."""
    att = dstack.decode_attestation(_payload(V0))
    log = [
        {
            "imr": e.imr,
            "event_type": e.event_type,
            "digest": e.digest.hex(),
            "event": e.event,
            "event_payload": e.payload.hex(),
        }
        for e in att.event_log
    ]
    classic = dstack.from_classic(att.quote, json.dumps(log).encode())
    assert classic.encoding == "classic"
    assert [n for n, _ in classic.runtime_events] == EVENTS
    assert _check(classic, V0).failures == ()
    log[-1]["digest"] = "00" * 48
    broken = dstack.from_classic(att.quote, json.dumps(log).encode())
    assert [c for c, _ in _check(broken, V0).failures] == ["event-log"]
    with pytest.raises(RaTlsError, match="ELGZv1"):
        dstack.from_classic(att.quote, b"ELGZv1...")
    with pytest.raises(RaTlsError, match="hex"):
        dstack.from_classic(att.quote, json.dumps([{**log[0], "digest": "zz"}]).encode())
    with pytest.raises(RaTlsError, match="JSON"):
        dstack.from_classic(att.quote, b"[{")


def test_checks_fail_one_at_a_time() -> None:
    att = dstack.decode_attestation(_payload(V0))
    q = parse_quote(att.quote)

    def checks(**over: object) -> list[str]:
        return [c for c, _ in _check(att, V0, **over).failures]

    assert checks(spki_der=b"another key") == ["binding"]
    assert checks(rt_mr3=bytes(48)) == ["event-log"]
    assert checks(app_id_extension=b"\x01" * 20) == ["app-id"]
    other = b"\x01" + bytes(32) + bytes(15)
    assert checks(mr_config_id=other) == ["mr-config-id"]
    # Versions 2 and 3 hash more than the compose hash: reported, not checked.
    v2 = _check(att, V0, mr_config_id=b"\x02" + bytes(47))
    assert v2.failures == ()
    assert (v2.details["mr_config_id_version"], v2.details["mr_config_id_checked"]) == (2, False)
    none = _check(att, V0, mr_config_id=bytes(48))
    assert none.details["mr_config_id_version"] == 0
    assert none.failures == ()
    assert q.measurement.mr_config_id[0] == 1


def test_app_identity_is_what_was_measured_before_system_ready() -> None:
    att = dstack.decode_attestation(_payload(V0))
    events = list(att.runtime_events)
    extra = [*events, ("compose-hash", bytes(32))]  # the app's own event after boot
    replayed = dstack.replay_rtmr([dstack.event_digest(n, p) for n, p in extra])
    res = _check(dataclasses.replace(att, runtime_events=tuple(extra)), V0, rt_mr3=replayed)
    assert res.failures == ()
    assert res.details["compose_hash"] == COMPOSE_HASH.hex()
    twice = [*events[:3], ("compose-hash", bytes(32)), *events[3:]]
    replayed = dstack.replay_rtmr([dstack.event_digest(n, p) for n, p in twice])
    res = _check(dataclasses.replace(att, runtime_events=tuple(twice)), V0, rt_mr3=replayed)
    assert [c for c, _ in res.failures] == ["event-log"]


def test_scale_rejects_malformed() -> None:
    data = _payload(V0)
    for cut in (1, 2, 3, 100, 5010, len(data) - 1):
        with pytest.raises(RaTlsError):
            dstack.decode_attestation(data[:cut])
    with pytest.raises(RaTlsError, match="trailing"):
        dstack.decode_attestation(data + b"\x00")
    with pytest.raises(RaTlsError, match="variant 3"):  # SEV-SNP under dstack: not read
        dstack.decode_attestation(b"\x00\x03" + data[2:])
    with pytest.raises(RaTlsError, match=r"truncated|entries|too large"):
        dstack.decode_attestation(b"\x00\x00\xff\xff\xff\xff\xff")  # a huge compact length
    with pytest.raises(RaTlsError, match="unknown encoding"):
        dstack.decode_attestation(b"\x42")
    with pytest.raises(RaTlsError, match="empty"):
        dstack.decode_attestation(b"")


def test_msgpack_rejects_malformed() -> None:
    doc = msgpack.unpackb(_payload(V1), raw=False)

    def decode(d: object) -> dstack.DstackAttestation:
        return dstack.decode_attestation(msgpack.packb(d, use_bin_type=True))

    assert decode(doc).encoding == "msgpack-v1"  # the re-encoding itself is fine
    with pytest.raises(RaTlsError, match="version"):
        decode({**doc, "version": 2})
    with pytest.raises(RaTlsError, match="platform"):
        decode({**doc, "platform": {**doc["platform"], "kind": "nitro-enclave"}})
    stack = doc["stack"]
    with pytest.raises(RaTlsError, match="64 bytes"):
        decode({**doc, "stack": {**stack, "data": {**stack["data"], "report_data": [1]}}})
    with pytest.raises(RaTlsError, match="byte string"):
        decode({**doc, "stack": {**stack, "data": {**stack["data"], "report_data": [256] * 64}}})
    with pytest.raises(RaTlsError, match="lacks 'quote'"):
        decode({**doc, "platform": {"kind": "tdx", "data": {"event_log": []}}})
    with pytest.raises(RaTlsError, match="MessagePack"):
        dstack.decode_attestation(b"\x81\xa1")


def test_unwrap_octets() -> None:
    assert dstack.unwrap_octets(b"\x04\x03abc") == b"abc"
    assert dstack.unwrap_octets(b"\x04\x81\x80" + bytes(128)) == bytes(128)
    for bad in (b"", b"\x05\x01a", b"\x04\x05abc", b"\x04\x85" + bytes(5), b"\x04\x03abcd"):
        with pytest.raises(RaTlsError):
            dstack.unwrap_octets(bad)


_REAL = {name: _payload(name) for name in (V0, V1)}


@settings(max_examples=200, deadline=None)
@given(
    name=st.sampled_from(sorted(_REAL)),
    cuts=st.lists(st.tuples(st.integers(0, 20000), st.integers(0, 255)), max_size=6),
    truncate=st.integers(0, 20000),
)
def test_mutated_attestations_fail_cleanly(
    name: str, cuts: list[tuple[int, int]], truncate: int
) -> None:
    """Byte flips and truncations of the real payloads: decoded, or RaTlsError, nothing else."""
    data = bytearray(_REAL[name])
    for pos, value in cuts:
        data[pos % len(data)] = value
    with contextlib.suppress(RaTlsError):
        dstack.decode_attestation(bytes(data[: max(1, truncate)]))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_fail_cleanly(data: bytes) -> None:
    for decode in (dstack.decode_attestation, dstack.unwrap_octets):
        with contextlib.suppress(RaTlsError):
            decode(data)
    with contextlib.suppress(RaTlsError):
        dstack.from_classic(b"", data)


# -- Nitro under dstack, GetQuote answers, DIP-1 report_data ------------------------------------


def _nitro_scale(name: str) -> bytes:
    return (Path(__file__).resolve().parents[3] / "data" / "nitro" / name).read_bytes()


def _get_quote() -> bytes:
    return (
        Path(__file__).resolve().parents[3] / "data" / "dstack" / "tdx-lite-getquote.json"
    ).read_bytes()


def test_scale_nitro_attestations_decode() -> None:
    first = dstack.decode_attestation(_nitro_scale("nsm-qvl-nitro-attestation.scale.bin"))
    assert (first.platform, first.encoding, first.event_log) == ("nitro", "scale-v0", ())
    assert first.quote == _nitro_scale("nsm-qvl-nitro-attestation.cose")
    assert first.report_data == bytes(64) and first.runtime_events == ()
    second = dstack.decode_attestation(_nitro_scale("dstack-attest-nitro-attestation.scale.bin"))
    assert second.runtime_events == (("app-id", hashlib.sha256(b"").digest()[:20]),)
    assert second.report_data == hashlib.sha256(b"").digest() + bytes(32)
    assert '"os_image_hash":"1894b0b2' in second.config


def test_check_nitro() -> None:
    att = dstack.decode_attestation(_nitro_scale("dstack-attest-nitro-attestation.scale.bin"))
    from certmgr.attest.nitro import parse_nitro_document

    doc = parse_nitro_document(att.quote)
    pcrs = (doc.pcrs[0], doc.pcrs[1], doc.pcrs[2])
    ok = dstack.check_nitro(att, user_data=doc.user_data, pcrs=pcrs)
    assert ok.failures == () and ok.details["runtime_events_measured"] is False
    assert ok.details["os_image_hash"].startswith("1894b0b2")
    bad = dstack.check_nitro(att, user_data=bytes(64), pcrs=pcrs)
    assert [c for c, _ in bad.failures] == ["binding"]
    other = dstack.check_nitro(att, user_data=doc.user_data, pcrs=(bytes(48), pcrs[1], pcrs[2]))
    assert [c for c, _ in other.failures] == ["config"]
    keyed = dstack.check_nitro(att, user_data=doc.user_data, pcrs=pcrs, spki_der=b"spki")
    assert [c for c, _ in keyed.failures] == ["binding"]
    assert dstack.nitro_image_hash(bytes(48), bytes(48), bytes(48)) == bytes(32)


def test_get_quote_answer_replays_rtmr3_and_names_a_dip1_key() -> None:
    att = dstack.parse_get_quote_response(_get_quote())
    assert att.encoding == "get-quote" and len(att.quote) == 5006
    key = dip1.parse_dip1(att.report_data or b"")
    assert key is not None and key.algorithm == "secp256k1"
    assert (
        key.public_key.hex() == "039e695a6b5e24824e8fcfe923bfa9cde0f1cb51b6ab5f060eff3c1cd45d057910"
    )
    assert len(key.eth_address()) == 20
    q = parse_quote(att.quote)
    res = dstack.check(
        att,
        quote_report_data=q.report_data,
        rt_mr3=q.measurement.rt_mr3,
        mr_config_id=q.measurement.mr_config_id,
        expected_report_data=att.report_data,
    )
    assert res.failures == ()
    assert res.details["rtmr3_replayed"] == q.measurement.rt_mr3.hex()
    assert res.details["compose_hash"].startswith("86b0e55f")
    assert (
        res.details["os_image_hash"]
        == "e6f5cfec20c02e7b97baa213d0f718020b55e040172d90ccbcb946d56c8b09db"
    )
    asked_other = dstack.check(
        att,
        quote_report_data=q.report_data,
        rt_mr3=q.measurement.rt_mr3,
        mr_config_id=q.measurement.mr_config_id,
        expected_report_data=bytes(64),
    )
    assert [c for c, _ in asked_other.failures] == ["binding"]
    wrong_rtmr = dstack.check(
        att,
        quote_report_data=q.report_data,
        rt_mr3=bytes(48),
        mr_config_id=q.measurement.mr_config_id,
    )
    assert [c for c, _ in wrong_rtmr.failures] == ["event-log"]


def test_get_quote_answer_rules() -> None:
    doc = json.loads(_get_quote())
    with pytest.raises(RaTlsError, match="64 bytes"):
        dstack.parse_get_quote_response(json.dumps({**doc, "report_data": "00"}).encode())
    with pytest.raises(RaTlsError, match="hex"):
        dstack.parse_get_quote_response(json.dumps({**doc, "quote": "zz"}).encode())
    with pytest.raises(RaTlsError, match="'quote'"):
        dstack.parse_get_quote_response(json.dumps({"event_log": "[]"}).encode())
    with pytest.raises(RaTlsError, match="JSON text"):
        dstack.parse_get_quote_response(json.dumps({**doc, "event_log": []}).encode())
    with pytest.raises(RaTlsError, match="too large"):
        dstack.parse_get_quote_response(b" " * (dstack.MAX_GET_QUOTE_RESPONSE + 1))
    with pytest.raises(RaTlsError, match="malformed JSON"):
        dstack.parse_get_quote_response(b"{")
    assert dstack.looks_like_get_quote(b"  {") and not dstack.looks_like_get_quote(b"\x04\x00")
    assert dstack.looks_like_scale_attestation(_nitro_scale("nsm-qvl-nitro-attestation.scale.bin"))


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=16000), st.integers(min_value=1, max_value=255))
def test_fuzz_get_quote_answer_raises_only_ratls_error(index: int, xor: int) -> None:
    raw = bytearray(_get_quote())
    raw[index % len(raw)] ^= xor
    with contextlib.suppress(RaTlsError):
        dstack.parse_get_quote_response(bytes(raw))
