"""The receipt signing key (a secp256k1 key born in the TEE, stored only sealed), and signing.

Owns the key's life cycle (docs/RECEIPTS.md, docs/ATTESTATION.md "Receipt signing key"):

- :class:`SigningKey`: a secp256k1 private key (libsecp256k1 through coincurve) that signs
  32-byte digests as 65 bytes ``r || s || v`` (``v`` in {27, 28}, low ``s`` as EIP-2
  requires) and knows its Ethereum address (the last 20 bytes of keccak-256 of the 64-byte
  uncompressed public key, Ethereum yellow paper appendix F). It never shows its key in a
  ``repr``, cannot be pickled, and has no method that returns the private key.
- :func:`prepare_signing_key` (supervisor, at start and at each certificate renewal): load
  the sealed key, or generate one (OS CSPRNG, rejection-sampled into ``[1, n-1]``) and store
  it sealed. Returns the key; the proxy binds its address in the attestation.
- :func:`load_signing_key` (workers): the same key, unsealed.
- :func:`store_shared_signing_key` / :func:`load_shared_signing_key`: in cluster mode with
  ``[cluster] shared_signing_key``, the fleet's key (docs/CLUSTER.md) as the supervisor
  received it from etcd, sealed again under this TEE's sealer for its workers.
- :func:`sign_receipt`: a :class:`certmgr.receipts.format.Receipt` signed with such a key (or
  any :class:`DigestSigner`, an eth-account key, or 32 raw key bytes, for tests and tools).

Layout under ``STATE/signing/`` (directory mode 0700)::

    secp256k1.key.sealed   the 32-byte private scalar, sealed (certmgr.keys Sealer, label
                           SEALING_LABEL), mode 0600
    address                "0x" + 40 lowercase hex + newline, mode 0644: for operators only;
                           never read back (the host can write it; the truth is the key)
    cluster-shared.key.sealed   the fleet's shared key (cluster mode), sealed under its own
                           label (SHARED_SEALING_LABEL), mode 0600; replaced when the
                           fleet's key is; cluster-shared.address as ``address``

Fail closed: a key file that exists but does not unseal (another sealing key, another
provider, corruption, tampering) stops start-up; it is never silently replaced, because its
address may be registered on chain. Rotation is an explicit operator step (move the sealed
file away; docs/ATTESTATION.md).

Blocking file I/O: call off the event loop (``asyncio.to_thread``).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn, Protocol, runtime_checkable

import coincurve

from certmgr.errors import ReceiptError, SealError, SigningKeyError
from certmgr.keys import Sealer, atomic_write
from certmgr.log import signing_log as log
from certmgr.receipts.format import (
    DEFAULT_DOMAIN,
    SECP256K1_N,
    Domain,
    Receipt,
    check_bytes,
    keccak256,
    typed_data_hash,
)

__all__ = [
    "ADDRESS_FILE",
    "KEY_FILE",
    "SEALING_LABEL",
    "SHARED_ADDRESS_FILE",
    "SHARED_KEY_FILE",
    "SHARED_SEALING_LABEL",
    "SigningKey",
    "load_shared_signing_key",
    "load_signing_key",
    "prepare_signing_key",
    "signing_dir",
    "store_shared_signing_key",
]


KEY_FILE: Final = "secp256k1.key.sealed"
ADDRESS_FILE: Final = "address"
# Dedicated sealing label (bound into the AEAD associated data by certmgr.keys): a blob
# sealed for another purpose never unseals as the signing key, and vice versa.
SEALING_LABEL: Final = "teeproxy/receipt-signing/secp256k1/v1"
SHARED_KEY_FILE: Final = "cluster-shared.key.sealed"
SHARED_ADDRESS_FILE: Final = "cluster-shared.address"
# Its own label: the fleet's key never unseals as this replica's own key, nor the reverse.
SHARED_SEALING_LABEL: Final = "teeproxy/receipt-signing/secp256k1/cluster-shared/v1"
_MAX_SEALED: Final = 4096  # a sealed 32-byte scalar is about 90 bytes
_GENERATE_TRIES: Final = 64  # a 256-bit draw falls outside [1, n-1] with p < 2^-127


def signing_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "signing"


def _scalar_ok(raw: bytes) -> bool:
    return len(raw) == 32 and 0 < int.from_bytes(raw, "big") < SECP256K1_N


class SigningKey:
    """A secp256k1 signing key held in this process. Signs digests; never shows itself."""

    __slots__ = ("_address", "_key")

    def __init__(self, key: coincurve.PrivateKey) -> None:
        self._key = key
        public = key.public_key.format(compressed=False)  # 0x04 || X || Y
        self._address: bytes = keccak256(public[1:])[-20:]

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key from the OS CSPRNG (``secrets``), rejection-sampled into [1, n-1]."""
        for _ in range(_GENERATE_TRIES):
            raw = secrets.token_bytes(32)
            if _scalar_ok(raw):
                return cls(coincurve.PrivateKey(raw))
        raise SigningKeyError("the random source kept giving out-of-range scalars")

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> SigningKey:
        """The key with this 32-byte big-endian scalar (tests and unsealing)."""
        if type(raw) is not bytes or not _scalar_ok(raw):
            raise SigningKeyError("a secp256k1 private key is 32 bytes in [1, n-1]")
        return cls(coincurve.PrivateKey(raw))

    @property
    def address(self) -> bytes:
        """The 20-byte Ethereum address of the public key."""
        return self._address

    @property
    def address_hex(self) -> str:
        """``0x`` + 40 lowercase hex digits (the form bound in the attestation claims)."""
        return "0x" + self._address.hex()

    def sign_digest(self, digest: bytes) -> bytes:
        """ECDSA over a 32-byte digest (no further hashing): 65 bytes ``r || s || v``.

        ``v`` is 27 + the recovery id, as ``ecrecover`` expects; ``s`` is low (EIP-2).
        libsecp256k1 always produces low ``s``; anything else is refused rather than sent.
        """
        if type(digest) is not bytes or len(digest) != 32:
            raise SigningKeyError("sign_digest takes exactly 32 bytes")
        sig = self._key.sign_recoverable(digest, hasher=None)
        r, s, recid = sig[:32], sig[32:64], sig[64]
        if not 0 < int.from_bytes(s, "big") <= SECP256K1_N // 2:
            raise SigningKeyError("signature is not low-s (EIP-2)")
        if recid not in (0, 1):  # 2/3 need r >= n, which ecrecover cannot express
            raise SigningKeyError(f"recovery id {recid} is not representable as v")
        return r + s + bytes([27 + recid])

    def sealed_with(self, seal: Callable[[bytes], bytes]) -> bytes:
        """Hand the 32-byte private scalar to ``seal`` and return what it returns.

        The one way the key leaves this object, for sealing it to something else (the
        cluster key: :mod:`certmgr.cluster.signer`): ``seal`` must encrypt, and its result
        is all the caller gets.
        """
        return seal(self._key.secret)

    def _seal(self, sealer: Sealer, label: str = SEALING_LABEL) -> bytes:
        return sealer.seal(self._key.secret, label)

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address_hex})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a SigningKey is not picklable (it would copy the private key)")


def _read_sealed(path: Path) -> bytes:
    with path.open("rb") as f:
        blob = f.read(_MAX_SEALED + 1)
    if len(blob) > _MAX_SEALED:
        raise SigningKeyError(f"{path}: larger than {_MAX_SEALED} bytes: not a sealed key")
    return blob


def _unseal(path: Path, sealer: Sealer, label: str = SEALING_LABEL) -> SigningKey:
    blob = _read_sealed(path)
    try:
        raw = sealer.unseal(blob, label)
    except SealError as e:
        if label != SEALING_LABEL:
            raise SigningKeyError(f"{path} does not unseal: {e}") from e
        raise SigningKeyError(
            f"{path} does not unseal with the {sealer.provider} sealing provider ({e}). "
            "Refusing to replace it: its address may be registered on chain. To rotate the "
            "receipt signing key, stop the proxy and move this file away "
            "(docs/ATTESTATION.md, 'Receipt signing key')"
        ) from e
    if not _scalar_ok(raw):
        raise SigningKeyError(f"{path}: the sealed content is not a secp256k1 private key")
    return SigningKey(coincurve.PrivateKey(raw))


def _write_address(d: Path, key: SigningKey, name: str = ADDRESS_FILE) -> None:
    text = (key.address_hex + "\n").encode("ascii")
    path = d / name
    try:
        with path.open("rb") as f:
            if f.read(len(text) + 1) == text:  # public data: no constant-time need
                return
    except FileNotFoundError:
        pass
    atomic_write(path, text, mode=0o644)


def prepare_signing_key(state_dir: str | Path, sealer: Sealer) -> SigningKey:
    """Supervisor step (blocking): the sealed signing key exists; returns it, unsealed.

    Loads ``STATE/signing/secp256k1.key.sealed``, or generates a key and stores it sealed
    when there is none. A file that exists but does not unseal raises
    :class:`SigningKeyError` (start-up stops). Also (re)writes ``STATE/signing/address``.
    """
    d = signing_dir(state_dir)
    path = d / KEY_FILE
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    if path.exists():
        key = _unseal(path, sealer)
        log.info("receipt signing key loaded (address %s)", key.address_hex)
    else:
        key = SigningKey.generate()
        atomic_write(path, key._seal(sealer), mode=0o600)
        log.info(
            "receipt signing key generated (address %s, sealed with %s)",
            key.address_hex,
            sealer.provider,
        )
    _write_address(d, key)
    return key


def load_signing_key(state_dir: str | Path, sealer: Sealer) -> SigningKey:
    """Worker step (blocking): the key :func:`prepare_signing_key` stored, unsealed."""
    path = signing_dir(state_dir) / KEY_FILE
    if not path.exists():
        raise SigningKeyError(f"{path}: no receipt signing key (the supervisor makes it)")
    return _unseal(path, sealer)


def store_shared_signing_key(state_dir: str | Path, sealer: Sealer, key: SigningKey) -> None:
    """Supervisor step in cluster mode (blocking): the fleet's key, sealed for the workers.

    Replaces ``STATE/signing/cluster-shared.key.sealed`` (atomically: a worker reading it
    sees the old key or the new one) and writes ``cluster-shared.address``.
    """
    d = signing_dir(state_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(d, 0o700)
    atomic_write(d / SHARED_KEY_FILE, key._seal(sealer, SHARED_SEALING_LABEL), mode=0o600)
    _write_address(d, key, SHARED_ADDRESS_FILE)


def load_shared_signing_key(state_dir: str | Path, sealer: Sealer) -> SigningKey:
    """Worker step in cluster mode (blocking): the key :func:`store_shared_signing_key`
    stored, unsealed."""
    path = signing_dir(state_dir) / SHARED_KEY_FILE
    if not path.exists():
        raise SigningKeyError(f"{path}: no shared receipt signing key (the supervisor makes it)")
    return _unseal(path, sealer, SHARED_SEALING_LABEL)


# -- signing receipts -------------------------------------------------------------------


@runtime_checkable
class DigestSigner(Protocol):
    """A key that signs 32-byte digests without exposing itself (:class:`SigningKey`).

    ``sign_digest`` returns 65 bytes ``r || s || v`` with ``v`` in {27, 28} and low ``s``;
    ``address`` is the 20-byte Ethereum address of its public key.
    """

    @property
    def address(self) -> bytes: ...

    def sign_digest(self, digest: bytes) -> bytes: ...


def _key_from(key: object) -> SigningKey:
    """32 raw private-key bytes, or an eth-account ``LocalAccount`` (anything with a 32-byte
    ``key``, read without importing eth-account), as a :class:`SigningKey`."""
    if type(key) is bytes:
        raw = key
    elif isinstance(getattr(key, "key", None), bytes):
        raw = bytes(key.key)  # type: ignore[attr-defined]  # LocalAccount.key (HexBytes)
    else:
        raise ReceiptError("signing key must be a LocalAccount or 32 private-key bytes")
    if len(raw) != 32:
        raise ReceiptError("a secp256k1 private key is 32 bytes")
    try:
        return SigningKey.from_private_bytes(raw)
    except SigningKeyError:
        raise ReceiptError("not a valid secp256k1 private key") from None


def sign_receipt(
    key: DigestSigner | bytes | object,
    *,
    request_sha256: bytes,
    response_sha256: bytes,
    model: str,
    response_id: str,
    timestamp: int,
    measurement_id: bytes,
    domain: Domain = DEFAULT_DOMAIN,
) -> Receipt:
    """Sign the EIP-712 digest of these fields; the caller computed both hashes itself."""
    digest = typed_data_hash(
        request_sha256=request_sha256,
        response_sha256=response_sha256,
        model=model,
        response_id=response_id,
        timestamp=timestamp,
        measurement_id=measurement_id,
        domain=domain,
    )
    # Not isinstance(key, DigestSigner): a runtime Protocol check costs ~20 us per call.
    sign_digest = getattr(key, "sign_digest", None)
    if callable(sign_digest):
        signature = sign_digest(digest)
        check_bytes("signature", signature, 65)
        signer = key.address  # type: ignore[union-attr]  # a DigestSigner
    else:
        own = _key_from(key)
        signature, signer = own.sign_digest(digest), own.address
    return Receipt(
        request_sha256=request_sha256,
        response_sha256=response_sha256,
        model=model,
        response_id=response_id,
        timestamp=timestamp,
        measurement_id=measurement_id,
        signature=signature,
        signer=signer,
    )
