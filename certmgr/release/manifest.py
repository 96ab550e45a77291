"""The build manifest: an in-toto Statement in a DSSE envelope, signed by the release key.

Pure: no I/O (callers read and write the files). Formats followed:

- in-toto Attestation Framework, Statement v1 (``https://in-toto.io/Statement/v1``):
  ``{"_type", "subject": [{"name", "digest": {"sha256": HEX}}], "predicateType",
  "predicate"}``. The subject is the OCI image (its manifest digest); the predicate, of
  type :data:`PREDICATE_TYPE`, names the lock file's SHA-256, the commit, SOURCE_DATE_EPOCH
  and the predicted measurement ids per target (:class:`certmgr.release.predict.Prediction`).
- DSSE v1 (secure-systems-lab/dsse, ``protocol.md`` and ``envelope.md``): the signature is
  over ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` (lengths in
  ASCII decimal bytes), the envelope is ``{"payload": b64(body), "payloadType": type,
  "signatures": [{"keyid", "sig": b64(sig)}]}``, payload type
  ``application/vnd.in-toto+json``.
- Signatures: ECDSA P-256 with SHA-256 (DER, as DSSE's and sigstore's ECDSA signers write
  them) or Ed25519; the key id is the hex SHA-256 of the key's SubjectPublicKeyInfo DER.

Reading is bounded (:data:`MAX_ENVELOPE` before any JSON decoding) and strict; a manifest
is trusted only through :func:`verify_manifest` with the release public key the caller
trusts: nothing here accepts a key the envelope names itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from certmgr.errors import ReleaseError

__all__ = [
    "MAX_ENVELOPE",
    "MIN_PASSWORD",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "STATEMENT_TYPE",
    "BuildManifest",
    "ManifestPrediction",
    "PrivateKey",
    "PublicKey",
    "build_statement",
    "decrypt_release_key",
    "encrypt_release_key",
    "generate_release_key",
    "key_id",
    "load_public_key",
    "pae",
    "public_pem",
    "sign_envelope",
    "verify_envelope",
    "verify_manifest",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PREDICATE_TYPE = "https://teeproxy.invalid/attestation/build-manifest/v1"
MAX_ENVELOPE = 1024 * 1024
MAX_KEY_FILE = 16 * 1024
MIN_PASSWORD = 8
MAX_PREDICTIONS = 64

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MID = re.compile(r"^0x[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's Pre-Authentication Encoding of ``body`` under ``payload_type``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(body), body)


# -- keys -------------------------------------------------------------------------------------


def generate_release_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 release key (in memory: store it only encrypted)."""
    return ec.generate_private_key(ec.SECP256R1())


def encrypt_release_key(key: PrivateKey, password: str) -> bytes:
    """PKCS #8 PEM encrypted under ``password`` (cryptography's best available scheme)."""
    if len(password) < MIN_PASSWORD:
        raise ReleaseError(f"use a password of at least {MIN_PASSWORD} characters")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password.encode("utf-8")),
    )


def decrypt_release_key(pem: bytes, password: str) -> PrivateKey:
    """The release key from its encrypted PEM; an unencrypted key file is refused."""
    if len(pem) > MAX_KEY_FILE:
        raise ReleaseError("release key file too large")
    if b"ENCRYPTED PRIVATE KEY" not in pem:
        raise ReleaseError("the release key file is not an encrypted PKCS #8 key")
    try:
        key = serialization.load_pem_private_key(pem, password.encode("utf-8"))
    except (ValueError, TypeError) as e:
        raise ReleaseError(f"cannot decrypt the release key: {e}") from e
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ReleaseError("a release key is ECDSA P-256 or Ed25519")


def load_public_key(pem: bytes) -> PublicKey:
    """A release public key (PEM SubjectPublicKeyInfo)."""
    if len(pem) > MAX_KEY_FILE:
        raise ReleaseError("release public key file too large")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise ReleaseError(f"not a PEM public key: {e}") from e
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ReleaseError("a release key is ECDSA P-256 or Ed25519")


def public_pem(key: PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo DER."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def _sign(key: PrivateKey, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def _verifies(key: PublicKey, sig: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, data)
        else:
            key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


# -- envelope ---------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise ReleaseError(f"DSSE envelope: {what} is not a string")
    try:
        # DSSE readers accept standard or URL-safe base64; strict about the alphabet.
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ReleaseError(f"DSSE envelope: {what} is not base64") from e


def sign_envelope(body: bytes, key: PrivateKey, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """A DSSE envelope (JSON bytes) over ``body`` with one signature by ``key``."""
    sig = _sign(key, pae(payload_type, body))
    env = {
        "payload": _b64(body),
        "payloadType": payload_type,
        "signatures": [{"keyid": key_id(key.public_key()), "sig": _b64(sig)}],
    }
    return json.dumps(env, indent=2).encode() + b"\n"


def verify_envelope(envelope: bytes, keys: Sequence[PublicKey]) -> tuple[str, bytes, str]:
    """(payload type, body, key id of the key that verified) of an envelope one of ``keys``
    signed. Raises :class:`ReleaseError` otherwise (nothing unverified is returned)."""
    if not keys:
        raise ReleaseError("no trusted release key given: a manifest is never read unverified")
    if len(envelope) > MAX_ENVELOPE:
        raise ReleaseError(f"DSSE envelope larger than {MAX_ENVELOPE} bytes")
    try:
        env = json.loads(envelope)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReleaseError(f"DSSE envelope: malformed JSON: {e}") from e
    if not isinstance(env, dict):
        raise ReleaseError("DSSE envelope: not a JSON object")
    payload_type = env.get("payloadType")
    if not isinstance(payload_type, str):
        raise ReleaseError("DSSE envelope: payloadType missing")
    body = _unb64(env.get("payload"), "payload")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or not sigs or len(sigs) > 16:
        raise ReleaseError("DSSE envelope: expected 1..16 signatures")
    message = pae(payload_type, body)
    for entry in sigs:
        if not isinstance(entry, dict):
            raise ReleaseError("DSSE envelope: a signature is not an object")
        sig = _unb64(entry.get("sig"), "sig")
        for key in keys:
            if _verifies(key, sig, message):
                return payload_type, body, key_id(key)
    raise ReleaseError("DSSE envelope: no signature verifies under the trusted release key")


# -- the statement ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ManifestPrediction:
    target: str
    tee: str
    measurement_id: str  # 0x + 64 hex
    registers: Mapping[str, str]
    inputs: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class BuildManifest:
    """A verified manifest (only :func:`verify_manifest` makes one from bytes)."""

    image_name: str
    image_digest: str  # sha256:HEX
    lock_sha256: str
    commit: str
    source_date_epoch: int
    predictions: tuple[ManifestPrediction, ...]
    key_id: str = ""
    statement: Mapping[str, Any] | None = None

    def measurement_ids(self) -> dict[str, str]:
        """target -> 0x... measurement id."""
        return {p.target: p.measurement_id for p in self.predictions}

    def target_for(self, mid: bytes) -> ManifestPrediction | None:
        want = "0x" + mid.hex()
        for p in self.predictions:
            if hmac.compare_digest(p.measurement_id, want):
                return p
        return None


def build_statement(
    *,
    image_name: str,
    image_digest: str,
    lock_sha256: str,
    commit: str,
    source_date_epoch: int,
    predictions: Sequence[Mapping[str, Any]],
) -> bytes:
    """The Statement (JSON bytes) for an image and its predictions (``Prediction.to_json()``)."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [
            {"name": image_name, "digest": {"sha256": image_digest.removeprefix("sha256:")}}
        ],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "image": {"name": image_name, "digest": image_digest},
            "lock_sha256": lock_sha256,
            "commit": commit,
            "source_date_epoch": source_date_epoch,
            "predictions": [dict(p) for p in predictions],
        },
    }
    _parse_statement(statement)  # what is signed is what a verifier accepts
    return json.dumps(statement, indent=2, sort_keys=True).encode() + b"\n"


def _str(doc: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None, what: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or len(value) > 4096:
        raise ReleaseError(f"build manifest: {what}.{key} is not a string")
    if pattern is not None and not pattern.match(value):
        raise ReleaseError(f"build manifest: {what}.{key} is malformed")
    return value


def _parse_statement(doc: Any) -> BuildManifest:
    if not isinstance(doc, dict):
        raise ReleaseError("build manifest: the statement is not an object")
    if doc.get("_type") != STATEMENT_TYPE:
        raise ReleaseError(f"build manifest: _type is not {STATEMENT_TYPE}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise ReleaseError(f"build manifest: predicateType is not {PREDICATE_TYPE}")
    pred = doc.get("predicate")
    subjects = doc.get("subject")
    if not isinstance(pred, dict) or not isinstance(subjects, list) or len(subjects) != 1:
        raise ReleaseError("build manifest: expected a predicate and exactly one subject")
    image = pred.get("image")
    if not isinstance(image, dict):
        raise ReleaseError("build manifest: predicate.image missing")
    digest = _str(image, "digest", _DIGEST, "predicate.image")
    name = _str(image, "name", None, "predicate.image")
    subject = subjects[0]
    sub_digest = subject.get("digest") if isinstance(subject, dict) else None
    if not isinstance(sub_digest, dict) or sub_digest.get("sha256") != digest.removeprefix(
        "sha256:"
    ):
        raise ReleaseError("build manifest: the subject is not the predicate's image digest")
    if subject.get("name") != name:
        raise ReleaseError("build manifest: the subject's name is not the image's")
    sde = pred.get("source_date_epoch")
    if type(sde) is not int or sde < 0:
        raise ReleaseError("build manifest: source_date_epoch is not a non-negative integer")
    raw_preds = pred.get("predictions")
    if not isinstance(raw_preds, list) or not 0 < len(raw_preds) <= MAX_PREDICTIONS:
        raise ReleaseError(f"build manifest: expected 1..{MAX_PREDICTIONS} predictions")
    predictions = []
    for p in raw_preds:
        if not isinstance(p, dict):
            raise ReleaseError("build manifest: a prediction is not an object")
        regs, inputs = p.get("registers"), p.get("inputs", {})
        if not isinstance(regs, dict) or not isinstance(inputs, dict):
            raise ReleaseError("build manifest: prediction registers/inputs malformed")
        predictions.append(
            ManifestPrediction(
                _str(p, "target", None, "prediction"),
                _str(p, "tee", None, "prediction"),
                _str(p, "measurement_id", _MID, "prediction"),
                {str(k): str(v) for k, v in regs.items()},
                inputs,
            )
        )
    targets = [p.target for p in predictions]
    if len(set(targets)) != len(targets):
        raise ReleaseError("build manifest: a target is predicted twice")
    return BuildManifest(
        image_name=name,
        image_digest=digest,
        lock_sha256=_str(pred, "lock_sha256", _HEX64, "predicate"),
        commit=_str(pred, "commit", _COMMIT, "predicate"),
        source_date_epoch=sde,
        predictions=tuple(predictions),
        statement=doc,
    )


def verify_manifest(envelope: bytes, keys: Sequence[PublicKey]) -> BuildManifest:
    """The manifest in ``envelope`` if one of ``keys`` signed it and it is well-formed."""
    payload_type, body, kid = verify_envelope(envelope, keys)
    if payload_type != PAYLOAD_TYPE:
        raise ReleaseError(f"DSSE envelope: payloadType is not {PAYLOAD_TYPE}")
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ReleaseError(f"build manifest: malformed JSON: {e}") from e
    return replace(_parse_statement(doc), key_id=kid)
