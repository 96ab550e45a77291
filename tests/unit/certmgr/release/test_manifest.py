"""certmgr.release.manifest: DSSE envelopes and the in-toto Statement of a build.

Checked against the DSSE specification's PAE example (secure-systems-lab/dsse
``protocol.md``) and against securesystemslib's DSSE implementation (secure-systems-lab's
own), both ways: it verifies our envelopes, we verify its.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

from certmgr.errors import ReleaseError
from certmgr.release import manifest as mf

DIGEST = "sha256:" + "ab" * 32
PRED = {
    "target": "simulated-tdx",
    "tee": "tdx",
    "measurement_id": "0x" + "12" * 32,
    "registers": {"mr_td": "00"},
    "inputs": {},
}


def _statement(**over: Any) -> bytes:
    args: dict[str, Any] = {
        "image_name": "teeproxy",
        "image_digest": DIGEST,
        "lock_sha256": "cd" * 32,
        "commit": "ef" * 20,
        "source_date_epoch": 1700000000,
        "predictions": [PRED],
    }
    args.update(over)
    return mf.build_statement(**args)


def test_pae_is_the_specifications_example() -> None:
    assert (
        mf.pae("http://example.com/HelloWorld", b"hello world")
        == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


@pytest.mark.parametrize("make", [mf.generate_release_key, ed25519.Ed25519PrivateKey.generate])
def test_securesystemslib_verifies_our_envelope(make: Any) -> None:
    key = make()
    body = _statement()
    env = json.loads(mf.sign_envelope(body, key))
    theirs = Envelope.from_dict(env)
    ssl_key = SSlibKey.from_crypto(key.public_key(), keyid=mf.key_id(key.public_key()))
    assert ssl_key.keyid in theirs.verify([ssl_key], 1)
    assert theirs.payload == body
    assert theirs.pae() == mf.pae(mf.PAYLOAD_TYPE, body)


@pytest.mark.parametrize("make", [mf.generate_release_key, ed25519.Ed25519PrivateKey.generate])
def test_we_verify_securesystemslibs_envelope(make: Any) -> None:
    key = make()
    signer = CryptoSigner(key)
    theirs = Envelope(_statement(), mf.PAYLOAD_TYPE, {})
    theirs.sign(signer)
    raw = json.dumps(theirs.to_dict()).encode()
    m = mf.verify_manifest(raw, [key.public_key()])
    assert m.image_digest == DIGEST
    assert m.measurement_ids() == {"simulated-tdx": "0x" + "12" * 32}
    other = mf.generate_release_key().public_key()
    with pytest.raises(ReleaseError, match="no signature verifies"):
        mf.verify_manifest(raw, [other])


def test_round_trip_and_every_flipped_payload_byte_refused() -> None:
    key = mf.generate_release_key()
    raw = mf.sign_envelope(_statement(), key)
    m = mf.verify_manifest(raw, [key.public_key()])
    assert (m.commit, m.source_date_epoch, m.key_id) == (
        "ef" * 20,
        1700000000,
        mf.key_id(key.public_key()),
    )
    env = json.loads(raw)
    body = bytearray(base64.b64decode(env["payload"]))
    for i in range(0, len(body), 7):
        flipped = bytearray(body)
        flipped[i] ^= 0x01
        env["payload"] = base64.b64encode(bytes(flipped)).decode()
        with pytest.raises(ReleaseError):
            mf.verify_manifest(json.dumps(env).encode(), [key.public_key()])
    # A flipped byte anywhere in the file: refused, never accepted with other content.
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        try:
            got = mf.verify_manifest(bytes(bad), [key.public_key()])
        except ReleaseError:
            continue
        assert got.statement == m.statement  # only JSON whitespace changed, body intact


def test_payload_type_is_authenticated() -> None:
    key = mf.generate_release_key()
    env = json.loads(mf.sign_envelope(_statement(), key, payload_type="text/plain"))
    with pytest.raises(ReleaseError, match="payloadType"):
        mf.verify_manifest(json.dumps(env).encode(), [key.public_key()])
    env["payloadType"] = mf.PAYLOAD_TYPE  # relabelled: the signature no longer verifies
    with pytest.raises(ReleaseError, match="no signature verifies"):
        mf.verify_manifest(json.dumps(env).encode(), [key.public_key()])


def test_no_key_and_oversized_input_refused() -> None:
    key = mf.generate_release_key()
    raw = mf.sign_envelope(_statement(), key)
    with pytest.raises(ReleaseError, match="no trusted release key"):
        mf.verify_manifest(raw, [])
    with pytest.raises(ReleaseError, match="larger than"):
        mf.verify_manifest(b" " * (mf.MAX_ENVELOPE + 1), [key.public_key()])
    with pytest.raises(ReleaseError, match="malformed JSON"):
        mf.verify_manifest(b"{not json", [key.public_key()])


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"image_digest": "sha256:XYZ"}, "digest"),
        ({"lock_sha256": "short"}, "lock_sha256"),
        ({"commit": "main"}, "commit"),
        ({"source_date_epoch": -1}, "source_date_epoch"),
        ({"predictions": []}, "predictions"),
        ({"predictions": [PRED, PRED]}, "twice"),
        ({"predictions": [{**PRED, "measurement_id": "0x12"}]}, "measurement_id"),
    ],
)
def test_malformed_statements_are_not_signed(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ReleaseError, match=message):
        _statement(**over)


def test_release_key_is_stored_encrypted_only() -> None:
    key = mf.generate_release_key()
    pem = mf.encrypt_release_key(key, "correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in pem
    back = mf.decrypt_release_key(pem, "correct horse")
    assert mf.key_id(back.public_key()) == mf.key_id(key.public_key())
    with pytest.raises(ReleaseError, match="cannot decrypt"):
        mf.decrypt_release_key(pem, "wrong password")
    with pytest.raises(ReleaseError, match="at least"):
        mf.encrypt_release_key(key, "short")
    plain = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ReleaseError, match="not an encrypted"):
        mf.decrypt_release_key(plain, "correct horse")
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(ReleaseError, match="P-256 or Ed25519"):
        mf.decrypt_release_key(mf.encrypt_release_key(p384, "correct horse"), "correct horse")
    with pytest.raises(ReleaseError, match="P-256 or Ed25519"):
        mf.load_public_key(mf.public_pem(p384.public_key()))
