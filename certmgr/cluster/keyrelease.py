"""Attested key release: a replica's join record, and the cluster key wrapped to it with HPKE.

A replica that wants the cluster key generates an HPKE key pair (P-256, in memory only,
new at every start) and publishes a **join record** in etcd: its member id, the public key
(DER SubjectPublicKeyInfo) and nonce evidence from its TEE (:mod:`certmgr.attest.evidence`,
the same document ``/.well-known/tee/attestation`` serves) whose claims bind

- ``"pubkey-hash"``: ``[1, SHA-256(SPKI of the HPKE key)]``;
- ``"nonce"``: :func:`join_nonce`, SHA-256 over the cluster name, the member id, that
  SPKI and the SPKI of the member's ECDSA P-256 *signing* key, so the evidence names this
  cluster, this member and both keys, and no other.

HPKE base mode authenticates no sender: anyone who reads a join record could wrap a key of
their own to it. So a wrapped key travels in a :class:`WrapRecord` signed by the member that
wrapped it, with the signing key its own verified join record binds; a recipient accepts it
only from a member whose evidence verifies and whose measurement is allowed now.

A member holding the key verifies the evidence with the verifier clients use
(:func:`certmgr.attest.verify.verify_evidence`: quote genuine, binding, not debug, and the
measurement allowed by the on-chain policy *now*) and only then wraps the 32-byte cluster
key of the current epoch to that public key: HPKE base mode (RFC 9180 section 5.1.1)
with DHKEM(P-256, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM, as implemented by
``cryptography`` (>= 47). The HPKE ``info`` binds the cluster, the member id and the epoch,
so a wrapped key cannot be replayed to another member or presented as another epoch.

Pure module: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from certmgr.attest.evidence import MAX_EVIDENCE_SIZE
from certmgr.errors import EnvelopeError

__all__ = [
    "CLUSTER_KEY_SIZE",
    "MAX_JOIN_RECORD",
    "MEMBER_ID",
    "JoinRecord",
    "WrapRecord",
    "join_nonce",
    "load_p256",
    "spki_der",
    "unwrap_keys",
    "wrap_keys",
]

CLUSTER_KEY_SIZE = 32
MAX_EPOCHS = 4
MAX_JOIN_RECORD = MAX_EVIDENCE_SIZE + 16 * 1024
MAX_WRAPPED = 1024
MEMBER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
_SUITE = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def spki_der(pub: ec.EllipticCurvePublicKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _lv(*parts: bytes) -> bytes:
    """Length-prefixed concatenation (u32 big-endian lengths): unambiguous."""
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def join_nonce(cluster: str, member_id: str, hpke_spki: bytes, sign_spki: bytes) -> bytes:
    """The evidence nonce of a join record: binds cluster, member and keys (32 bytes)."""
    return hashlib.sha256(
        b"teeproxy-cluster-join/1\0"
        + _lv(cluster.encode(), member_id.encode(), hpke_spki, sign_spki)
    ).digest()


def _info(cluster: str, member_id: str, epoch: int) -> bytes:
    return (
        b"teeproxy-cluster-key/1\0"
        + cluster.encode()
        + b"\0"
        + member_id.encode()
        + b"\0"
        + struct.pack(">I", epoch)
    )


def wrap_keys(
    keys: Mapping[int, bytes],
    recipient: ec.EllipticCurvePublicKey,
    cluster: str,
    member_id: str,
    epoch: int,
) -> bytes:
    """HPKE-seal the cluster keys of ``epoch`` and up to three earlier epochs (receipts and
    values sealed before a rotation stay readable) to ``recipient`` (enc || ciphertext)."""
    if epoch not in keys:
        raise EnvelopeError("the current epoch's key must be among the keys wrapped")
    if not isinstance(recipient.curve, ec.SECP256R1):
        raise EnvelopeError("the recipient's HPKE key must be P-256")
    chosen = sorted((e for e in keys if e <= epoch), reverse=True)[:MAX_EPOCHS]
    plaintext = b""
    for e in chosen:
        if len(keys[e]) != CLUSTER_KEY_SIZE:
            raise EnvelopeError("a cluster key is 32 bytes")
        plaintext += struct.pack(">I", e) + keys[e]
    return _SUITE.encrypt(plaintext, recipient, _info(cluster, member_id, epoch))


def unwrap_keys(
    blob: bytes, private: ec.EllipticCurvePrivateKey, cluster: str, member_id: str, epoch: int
) -> dict[int, bytes]:
    """The keys :func:`wrap_keys` sealed: {epoch: key}, the current ``epoch`` among them."""
    if len(blob) > MAX_WRAPPED:
        raise EnvelopeError("wrapped key too large")
    try:
        pt = _SUITE.decrypt(blob, private, _info(cluster, member_id, epoch))
    except (InvalidTag, ValueError) as e:
        raise EnvelopeError(f"wrapped key for epoch {epoch} does not open") from e
    step = 4 + CLUSTER_KEY_SIZE
    if not pt or len(pt) % step or len(pt) > MAX_EPOCHS * step:
        raise EnvelopeError("unwrapped cluster keys have the wrong length")
    keys = {
        struct.unpack_from(">I", pt, i)[0]: pt[i + 4 : i + step] for i in range(0, len(pt), step)
    }
    if epoch not in keys or any(e > epoch for e in keys):
        raise EnvelopeError("unwrapped cluster keys do not hold the current epoch's")
    return keys


@dataclass(frozen=True, slots=True)
class JoinRecord:
    """What a replica publishes under ``members/<id>`` (lease-bound: gone when it is)."""

    member_id: str
    hpke_spki: bytes
    sign_spki: bytes
    evidence: bytes  # the evidence JSON document, verified by the members
    measurement_id: str  # as the replica claims it: informative; the verifier decides
    started_at: int
    admin: str = ""  # where `teeproxy cluster status` may look (informative)
    # Where an operator reaches this replica over HTTPS for a fresh attestation
    # (`teeproxy policy register-signer --cluster-members`): informative, like ``admin``;
    # what counts is the attestation verified there.
    url: str = ""
    # "shared" (the fleet's receipt signing key) or "own" (this replica's); informative.
    receipt_signer: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": "teeproxy-cluster-join/1",
                "member": self.member_id,
                "hpke_spki": base64.b64encode(self.hpke_spki).decode(),
                "sign_spki": base64.b64encode(self.sign_spki).decode(),
                "evidence": base64.b64encode(self.evidence).decode(),
                "measurement_id": self.measurement_id,
                "started_at": self.started_at,
                "admin": self.admin,
                "url": self.url,
                "receipt_signer": self.receipt_signer,
            },
            sort_keys=True,
        ).encode()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return load_p256(self.hpke_spki, f"join record of {self.member_id}: HPKE key")

    def signing_key(self) -> ec.EllipticCurvePublicKey:
        return load_p256(self.sign_spki, f"join record of {self.member_id}: signing key")

    @classmethod
    def parse(cls, raw: bytes) -> JoinRecord:
        """Strictly parse a join record read from etcd (size-capped before decoding)."""
        if len(raw) > MAX_JOIN_RECORD:
            raise EnvelopeError("join record too large")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise EnvelopeError("join record is not JSON") from e
        if not isinstance(doc, dict) or doc.get("format") != "teeproxy-cluster-join/1":
            raise EnvelopeError("join record: wrong format")
        member = doc.get("member")
        if not isinstance(member, str) or MEMBER_ID.fullmatch(member) is None:
            raise EnvelopeError("join record: bad member id")
        try:
            spki = base64.b64decode(str(doc.get("hpke_spki", "")), validate=True)
            sign = base64.b64decode(str(doc.get("sign_spki", "")), validate=True)
            evidence = base64.b64decode(str(doc.get("evidence", "")), validate=True)
        except (binascii.Error, ValueError) as e:
            raise EnvelopeError("join record: bad base64") from e
        mid = doc.get("measurement_id")
        started = doc.get("started_at")
        admin = doc.get("admin", "")
        if not isinstance(mid, str) or len(mid) > 66 or not isinstance(admin, str):
            raise EnvelopeError("join record: bad measurement id or admin address")
        if not isinstance(started, int) or isinstance(started, bool):
            raise EnvelopeError("join record: bad start time")
        url, signer = doc.get("url", ""), doc.get("receipt_signer", "")
        if not isinstance(url, str) or len(url) > 200 or (url and not url.startswith("https://")):
            raise EnvelopeError("join record: bad url")
        if signer not in ("", "shared", "own"):
            raise EnvelopeError("join record: bad receipt_signer")
        return cls(member, spki, sign, evidence, mid, started, admin[:200], url, str(signer))


def load_p256(der: bytes, what: str) -> ec.EllipticCurvePublicKey:
    if len(der) > 512:
        raise EnvelopeError(f"{what}: too large")
    try:
        pub = serialization.load_der_public_key(der)
    except ValueError as e:
        raise EnvelopeError(f"{what}: not a public key") from e
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise EnvelopeError(f"{what}: not P-256")
    return pub


@dataclass(frozen=True, slots=True)
class WrapRecord:
    """``wrap/<epoch>/<member>``: the keys wrapped to one member, signed by the wrapper.

    The signature (ECDSA P-256, SHA-256) covers cluster, recipient, epoch, the SHA-256 of the
    recipient's HPKE SPKI, the recipient's measurement id as verified, and the wrapped bytes.
    """

    epoch: int
    member_id: str
    by: str
    measurement_id: str  # the recipient's, as the wrapper verified it
    recipient_spki_sha256: bytes
    wrapped: bytes
    signature: bytes = b""

    def signed_bytes(self, cluster: str) -> bytes:
        return b"teeproxy-cluster-wrap/1\0" + _lv(
            cluster.encode(),
            self.member_id.encode(),
            self.by.encode(),
            struct.pack(">I", self.epoch),
            self.measurement_id.encode(),
            self.recipient_spki_sha256,
            self.wrapped,
        )

    def sign(self, cluster: str, key: ec.EllipticCurvePrivateKey) -> WrapRecord:
        sig = key.sign(self.signed_bytes(cluster), ec.ECDSA(hashes.SHA256()))
        return WrapRecord(
            self.epoch,
            self.member_id,
            self.by,
            self.measurement_id,
            self.recipient_spki_sha256,
            self.wrapped,
            sig,
        )

    def verify(self, cluster: str, wrapper: ec.EllipticCurvePublicKey) -> bool:
        try:
            wrapper.verify(self.signature, self.signed_bytes(cluster), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": "teeproxy-cluster-wrap/1",
                "epoch": self.epoch,
                "member": self.member_id,
                "by": self.by,
                "measurement_id": self.measurement_id,
                "recipient_spki_sha256": self.recipient_spki_sha256.hex(),
                "wrapped": base64.b64encode(self.wrapped).decode(),
                "signature": base64.b64encode(self.signature).decode(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def parse(cls, raw: bytes) -> WrapRecord:
        if len(raw) > 4 * MAX_WRAPPED:
            raise EnvelopeError("wrap record too large")
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise EnvelopeError("wrap record is not JSON") from e
        if not isinstance(doc, dict) or doc.get("format") != "teeproxy-cluster-wrap/1":
            raise EnvelopeError("wrap record: wrong format")
        epoch, member, by, mid = (doc.get(k) for k in ("epoch", "member", "by", "measurement_id"))
        if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 < epoch < 2**32:
            raise EnvelopeError("wrap record: bad epoch")
        for v in (member, by):
            if not isinstance(v, str) or MEMBER_ID.fullmatch(v) is None:
                raise EnvelopeError("wrap record: bad member id")
        if not isinstance(mid, str) or len(mid) > 66:
            raise EnvelopeError("wrap record: bad measurement id")
        try:
            spki_hash = bytes.fromhex(str(doc.get("recipient_spki_sha256", "")))
            wrapped = base64.b64decode(str(doc.get("wrapped", "")), validate=True)
            sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
        except (binascii.Error, ValueError) as e:
            raise EnvelopeError("wrap record: bad encoding") from e
        if len(spki_hash) != 32 or len(sig) > 80:
            raise EnvelopeError("wrap record: bad hash or signature length")
        return cls(epoch, str(member), str(by), mid, spki_hash, wrapped, sig)
