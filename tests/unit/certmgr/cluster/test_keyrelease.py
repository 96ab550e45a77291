"""HPKE key wrapping and join records: bound to cluster, member and epoch; strict parsing."""

from __future__ import annotations

import json
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.cluster.keyrelease import (
    MAX_JOIN_RECORD,
    JoinRecord,
    WrapRecord,
    join_nonce,
    spki_der,
    unwrap_keys,
    wrap_keys,
)
from certmgr.errors import EnvelopeError

KEY = os.urandom(32)


def test_wrap_unwrap() -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    old = os.urandom(32)
    blob = wrap_keys({2: KEY, 1: old}, priv.public_key(), "fleet", "r1", 2)
    assert KEY not in blob and old not in blob
    assert unwrap_keys(blob, priv, "fleet", "r1", 2) == {2: KEY, 1: old}


@pytest.mark.parametrize(
    ("cluster", "member", "epoch"), [("other", "r1", 2), ("fleet", "r2", 2), ("fleet", "r1", 3)]
)
def test_wrap_is_bound(cluster: str, member: str, epoch: int) -> None:
    priv = ec.generate_private_key(ec.SECP256R1())
    blob = wrap_keys({2: KEY}, priv.public_key(), "fleet", "r1", 2)
    with pytest.raises(EnvelopeError, match="does not open"):
        unwrap_keys(blob, priv, cluster, member, epoch)


def test_wrong_recipient_and_curve() -> None:
    blob = wrap_keys({1: KEY}, ec.generate_private_key(ec.SECP256R1()).public_key(), "f", "r1", 1)
    with pytest.raises(EnvelopeError):
        unwrap_keys(blob, ec.generate_private_key(ec.SECP256R1()), "f", "r1", 1)
    with pytest.raises(EnvelopeError, match="P-256"):
        wrap_keys({1: KEY}, ec.generate_private_key(ec.SECP384R1()).public_key(), "f", "r1", 1)


def test_wrap_record_signature() -> None:
    signer = ec.generate_private_key(ec.SECP256R1())
    rec = WrapRecord(3, "r2", "r1", "0x" + "aa" * 32, bytes(32), b"wrapped").sign("f", signer)
    back = WrapRecord.parse(rec.to_json())
    assert back == rec and back.verify("f", signer.public_key())
    assert not back.verify("other", signer.public_key())
    assert not back.verify("f", ec.generate_private_key(ec.SECP256R1()).public_key())
    forged = WrapRecord(3, "r2", "r1", "0x" + "bb" * 32, bytes(32), b"wrapped", rec.signature)
    assert not forged.verify("f", signer.public_key())


def test_join_record_round_trip_and_nonce() -> None:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    sign = spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    rec = JoinRecord("r1", spki_der(pub), sign, b'{"version": 2}', "0x" + "ab" * 32, 1700000000)
    back = JoinRecord.parse(rec.to_json())
    assert back == rec
    assert back.public_key().public_numbers() == pub.public_numbers()
    n = join_nonce("fleet", "r1", rec.hpke_spki, sign)
    assert len(n) == 32
    assert n != join_nonce("fleet", "r2", rec.hpke_spki, sign)
    assert n != join_nonce("other", "r1", rec.hpke_spki, sign)
    assert n != join_nonce("fleet", "r1", rec.hpke_spki, rec.hpke_spki)


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "other"},
        {"format": "teeproxy-cluster-join/1", "member": "UPPER"},
        {"format": "teeproxy-cluster-join/1", "member": "r1", "hpke_spki": "!!"},
        {
            "format": "teeproxy-cluster-join/1",
            "member": "r1",
            "hpke_spki": "",
            "evidence": "",
            "measurement_id": "x",
            "started_at": True,
        },
    ],
)
def test_join_record_strict(doc: dict[str, object]) -> None:
    with pytest.raises(EnvelopeError):
        JoinRecord.parse(json.dumps(doc).encode())


def test_join_record_size_cap() -> None:
    with pytest.raises(EnvelopeError, match="too large"):
        JoinRecord.parse(b" " * (MAX_JOIN_RECORD + 1))


def _join_doc(**fields: object) -> bytes:
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    rec = JoinRecord("r1", spki_der(pub), spki_der(pub), b"{}", "0x" + "ab" * 32, 1, "", **fields)  # type: ignore[arg-type]
    return rec.to_json()


def test_join_record_url_and_signer_mode_round_trip_and_default() -> None:
    raw = _join_doc(url="https://10.0.0.21:8443", receipt_signer="shared")
    back = JoinRecord.parse(raw)
    assert (back.url, back.receipt_signer) == ("https://10.0.0.21:8443", "shared")
    # A record written before these fields existed still parses (both empty).
    doc = json.loads(raw)
    del doc["url"], doc["receipt_signer"]
    old = JoinRecord.parse(json.dumps(doc).encode())
    assert (old.url, old.receipt_signer) == ("", "")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("url", "http://10.0.0.21:8443"),
        ("url", "https://" + "a" * 200),
        ("url", 7),
        ("receipt_signer", "someone-else"),
    ],
)
def test_join_record_bad_url_or_signer_mode_refused(field: str, value: object) -> None:
    doc = json.loads(_join_doc())
    doc[field] = value
    with pytest.raises(EnvelopeError):
        JoinRecord.parse(json.dumps(doc).encode())
