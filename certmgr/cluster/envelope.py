"""Values stored in etcd, sealed to the cluster key: AEAD with the name, version and epoch bound.

etcd is outside the TEE. Every value a replica writes there is

    magic "TPCV1\\n" | u32 epoch | u64 version | 12-byte nonce | AES-256-GCM ciphertext+tag

under the *value key* of that epoch (HKDF-SHA256 of the epoch's cluster key, RFC 5869,
info ``teeproxy-cluster-value/1``). The associated data is the magic, the cluster name, the
value's name (its etcd key below the cluster prefix) and the header, so a value cannot be
moved to another name or cluster, nor its version or epoch changed, without failing
authentication.

Rollback: an old ciphertext authenticates as what it was. :class:`Watermarks` remembers the
highest version (and key epoch) a replica has accepted for each name and refuses anything
older (:class:`certmgr.errors.RollbackError`); what a replica never saw cannot be checked
(THREAT_MODEL.md, "etcd").

Pure module: no I/O.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certmgr.errors import EnvelopeError, RollbackError

__all__ = [
    "MAGIC",
    "MAX_VALUE",
    "Opened",
    "ValueKey",
    "Watermarks",
    "peek",
]

MAGIC = b"TPCV1\n"
_HEADER = struct.Struct(">IQ")
_NONCE = 12
_TAG = 16
MAX_VALUE = 1024 * 1024  # a sealed value (certificate chain, key, receipt) is far smaller


def _aad(cluster: str, name: str, header: bytes) -> bytes:
    return MAGIC + cluster.encode() + b"\0" + name.encode() + b"\0" + header


@dataclass(frozen=True, slots=True)
class Opened:
    epoch: int
    version: int
    plaintext: bytes


def peek(blob: bytes) -> tuple[int, int]:
    """(epoch, version) of a sealed value, unauthenticated: only to pick the epoch's key."""
    if len(blob) > MAX_VALUE:
        raise EnvelopeError(f"sealed value larger than {MAX_VALUE} bytes")
    if len(blob) < len(MAGIC) + _HEADER.size + _NONCE + _TAG or not blob.startswith(MAGIC):
        raise EnvelopeError("not a sealed cluster value")
    epoch, version = _HEADER.unpack_from(blob, len(MAGIC))
    return epoch, version


class ValueKey:
    """The AEAD key of one epoch (from that epoch's 32-byte cluster key)."""

    def __init__(self, cluster_key: bytes, epoch: int, cluster: str) -> None:
        if len(cluster_key) != 32:
            raise EnvelopeError("a cluster key is 32 bytes")
        if not 0 < epoch < 2**32:
            raise EnvelopeError("epoch out of range")
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=None,
            info=b"teeproxy-cluster-value/1\0" + cluster.encode(),
        ).derive(cluster_key)
        self._aead = AESGCM(derived)
        self.epoch = epoch
        self.cluster = cluster

    def seal(self, name: str, version: int, plaintext: bytes) -> bytes:
        if not 0 < version < 2**64:
            raise EnvelopeError("version out of range")
        header = _HEADER.pack(self.epoch, version)
        nonce = os.urandom(_NONCE)
        ct = self._aead.encrypt(nonce, plaintext, _aad(self.cluster, name, header))
        blob = MAGIC + header + nonce + ct
        if len(blob) > MAX_VALUE:
            raise EnvelopeError(f"{name}: sealed value larger than {MAX_VALUE} bytes")
        return blob

    def open(self, name: str, blob: bytes) -> Opened:
        epoch, version = peek(blob)
        if epoch != self.epoch:
            raise EnvelopeError(f"{name}: sealed under epoch {epoch}, this key is {self.epoch}")
        start = len(MAGIC)
        header = blob[start : start + _HEADER.size]
        nonce = blob[start + _HEADER.size : start + _HEADER.size + _NONCE]
        ct = blob[start + _HEADER.size + _NONCE :]
        try:
            pt = self._aead.decrypt(nonce, ct, _aad(self.cluster, name, header))
        except InvalidTag as e:
            raise EnvelopeError(f"{name}: sealed value fails authentication") from e
        return Opened(epoch, version, pt)


@dataclass
class Watermarks:
    """The highest version accepted per name; older ones are a rollback (or a replay)."""

    seen: dict[str, int] = field(default_factory=dict)

    def check(self, name: str, version: int) -> None:
        """Raise :class:`RollbackError` when ``version`` is older than one already seen."""
        old = self.seen.get(name, 0)
        if version < old:
            raise RollbackError(name, version, old)

    def note(self, name: str, version: int) -> bool:
        """Record ``version`` (after :meth:`check`); True when it is newer than what was seen."""
        self.check(name, version)
        if version > self.seen.get(name, 0):
            self.seen[name] = version
            return True
        return False

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> Watermarks:
        seen: dict[str, int] = {}
        for k, v in list(data.items())[:10000]:
            if isinstance(k, str) and len(k) <= 256 and isinstance(v, int) and v >= 0:
                seen[k] = v
        return cls(seen)
