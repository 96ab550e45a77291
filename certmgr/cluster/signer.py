"""The fleet's shared receipt signing key, as stored in etcd under ``data/receipt-signer``.

With ``[cluster] shared_signing_key`` every replica signs receipts (docs/RECEIPTS.md) with
one secp256k1 key, so one address is registered on chain for the fleet. The key is made in
the TEE of the first allowed member (:meth:`SigningKey.generate`) and stored only sealed to
the cluster key, like the shared ACME account: a :mod:`certmgr.cluster.envelope` value
(AES-256-GCM; the associated data binds cluster, name, epoch and version) whose plaintext is

    magic "teeproxy-receipt-signer/1\\0" | u64 created_at | 32-byte scalar | 20-byte previous

``previous`` is the address of the key this one replaced (zero for the first), so any
member, even one started after a rotation, can tell the operator which signer to retire on
chain. A revocation rotation replaces the key (:func:`replace_signer`) rather than
re-sealing it: a revoked build held the old one.

Pure module: no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from certmgr.cluster.envelope import Opened, ValueKey
from certmgr.errors import EnvelopeError, SigningKeyError
from certmgr.receipts.signing import SigningKey

__all__ = ["SIGNER_VALUE", "SharedSigner", "open_signer", "replace_signer", "seal_signer"]

SIGNER_VALUE: Final = "data/receipt-signer"
_MAGIC: Final = b"teeproxy-receipt-signer/1\0"
_BODY: Final = struct.Struct(">Q32s20s")
_NO_ADDRESS: Final = bytes(20)


@dataclass(frozen=True, slots=True)
class SharedSigner:
    """The fleet's key as one member opened it (``version``/``epoch`` of the sealed value)."""

    key: SigningKey
    version: int
    epoch: int
    created_at: int
    previous: bytes  # the replaced key's 20-byte address; b"" for the first key

    @property
    def address_hex(self) -> str:
        return self.key.address_hex

    @property
    def previous_hex(self) -> str:
        return "0x" + self.previous.hex() if self.previous else ""


def seal_signer(
    value_key: ValueKey,
    version: int,
    key: SigningKey,
    created_at: int,
    previous: bytes = b"",
) -> bytes:
    """``key`` sealed as ``data/receipt-signer`` under ``value_key`` (the epoch's)."""
    if previous and len(previous) != 20:
        raise EnvelopeError("a previous signer is a 20-byte address")
    if not 0 <= created_at < 2**64:
        raise EnvelopeError("created_at out of range")

    def seal(scalar: bytes) -> bytes:
        body = _BODY.pack(created_at, scalar, previous or _NO_ADDRESS)
        return value_key.seal(SIGNER_VALUE, version, _MAGIC + body)

    return key.sealed_with(seal)


def open_signer(opened: Opened) -> SharedSigner:
    """Parse the plaintext of an opened ``data/receipt-signer`` (exact length, valid key)."""
    pt = opened.plaintext
    if len(pt) != len(_MAGIC) + _BODY.size or not pt.startswith(_MAGIC):
        raise EnvelopeError(f"{SIGNER_VALUE}: not a receipt signer record")
    created_at, scalar, previous = _BODY.unpack_from(pt, len(_MAGIC))
    try:
        key = SigningKey.from_private_bytes(scalar)
    except SigningKeyError as e:
        raise EnvelopeError(f"{SIGNER_VALUE}: {e}") from None
    return SharedSigner(
        key,
        opened.version,
        opened.epoch,
        created_at,
        b"" if previous == _NO_ADDRESS else previous,
    )


def replace_signer(
    value_key: ValueKey, old: SharedSigner, created_at: int
) -> tuple[SigningKey, bytes]:
    """A new key in place of ``old`` (version raised, ``previous`` naming ``old``), sealed
    under ``value_key``: (the new key, the sealed value)."""
    key = SigningKey.generate()
    return key, seal_signer(value_key, old.version + 1, key, created_at, old.key.address)
