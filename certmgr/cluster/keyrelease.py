"""Attested key release: a replica's join record, and the cluster key wrapped to it with HPKE.

A replica that wants the cluster key generates an HPKE key pair (P-256, in memory only,
new at every start) and publishes a **join record** in etcd: its member id, the public key
(DER SubjectPublicKeyInfo) and nonce evidence from its TEE (:mod:`certmgr.attest.evidence`,
the same document ``/.well-known/tee/attestation`` serves) whose claims bind

- ``"pubkey-hash"``: ``[1, SHA-256(SPKI of the HPKE key)]``;
- ``"nonce"``: :func:`join_nonce`, SHA-256 over the cluster name, the member id and that
  SPKI, so the evidence names this cluster and this member, and no other.

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
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite

from certmgr.attest.evidence import MAX_EVIDENCE_SIZE
from certmgr.errors import EnvelopeError

__all__ = [
    "CLUSTER_KEY_SIZE",
    "MAX_JOIN_RECORD",
    "MEMBER_ID",
    "JoinRecord",
    "join_nonce",
    "spki_der",
    "unwrap_key",
    "wrap_key",
]

CLUSTER_KEY_SIZE = 32
MAX_JOIN_RECORD = MAX_EVIDENCE_SIZE + 16 * 1024
MAX_WRAPPED = 1024
MEMBER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", re.ASCII)
_SUITE = Suite(KEM.P256, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def spki_der(pub: ec.EllipticCurvePublicKey) -> bytes:
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def join_nonce(cluster: str, member_id: str, hpke_spki: bytes) -> bytes:
    """The evidence nonce of a join record: binds cluster, member and key (32 bytes)."""
    return hashlib.sha256(
        b"teeproxy-cluster-join/1\0"
        + cluster.encode()
        + b"\0"
        + member_id.encode()
        + b"\0"
        + hpke_spki
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


def wrap_key(
    cluster_key: bytes,
    recipient: ec.EllipticCurvePublicKey,
    cluster: str,
    member_id: str,
    epoch: int,
) -> bytes:
    """HPKE-seal the epoch's cluster key to ``recipient`` (enc || ciphertext)."""
    if len(cluster_key) != CLUSTER_KEY_SIZE:
        raise EnvelopeError("a cluster key is 32 bytes")
    if not isinstance(recipient.curve, ec.SECP256R1):
        raise EnvelopeError("the recipient's HPKE key must be P-256")
    return _SUITE.encrypt(cluster_key, recipient, _info(cluster, member_id, epoch))


def unwrap_key(
    blob: bytes, private: ec.EllipticCurvePrivateKey, cluster: str, member_id: str, epoch: int
) -> bytes:
    if len(blob) > MAX_WRAPPED:
        raise EnvelopeError("wrapped key too large")
    try:
        key = _SUITE.decrypt(blob, private, _info(cluster, member_id, epoch))
    except (InvalidTag, ValueError) as e:
        raise EnvelopeError(f"wrapped key for epoch {epoch} does not open") from e
    if len(key) != CLUSTER_KEY_SIZE:
        raise EnvelopeError("unwrapped cluster key has the wrong length")
    return key


@dataclass(frozen=True, slots=True)
class JoinRecord:
    """What a replica publishes under ``members/<id>`` (lease-bound: gone when it is)."""

    member_id: str
    hpke_spki: bytes
    evidence: bytes  # the evidence JSON document, verified by the members
    measurement_id: str  # as the replica claims it: informative; the verifier decides
    started_at: int
    admin: str = ""  # where `teeproxy cluster status` may look (informative)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "format": "teeproxy-cluster-join/1",
                "member": self.member_id,
                "hpke_spki": base64.b64encode(self.hpke_spki).decode(),
                "evidence": base64.b64encode(self.evidence).decode(),
                "measurement_id": self.measurement_id,
                "started_at": self.started_at,
                "admin": self.admin,
            },
            sort_keys=True,
        ).encode()

    def public_key(self) -> ec.EllipticCurvePublicKey:
        try:
            pub = serialization.load_der_public_key(self.hpke_spki)
        except ValueError as e:
            raise EnvelopeError(f"join record of {self.member_id}: bad HPKE key") from e
        if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(
            pub.curve, ec.SECP256R1
        ):
            raise EnvelopeError(f"join record of {self.member_id}: HPKE key is not P-256")
        return pub

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
        return cls(member, spki, evidence, mid, started, admin[:200])
