"""Key generation and sealing: private keys are born in this process and stored only sealed.

A :class:`Sealer` encrypts bytes under a key that never leaves the TEE (the TEE sealing
provider, :mod:`certmgr.sealing`). :class:`InsecureDevSealer` is the
development stand-in: its key is a published constant, so anything it seals is as good as
plaintext. It says so in its name, in every blob it writes and in the log.

Sealed blob layout (all integers big-endian)::

    magic "TPSEAL1\\n" | u8 len(provider) | provider | 12-byte nonce | AES-256-GCM ciphertext+tag

The associated data binds the provider name and a caller-chosen label (for example
``"dev-ca/root.key"``), so a blob cannot be swapped for another file's.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from certmgr.errors import SealError
from certmgr.log import keys_log as log

__all__ = [
    "InsecureDevSealer",
    "Sealer",
    "atomic_write",
    "generate_p256",
    "load_sealed_key",
    "spki_sha256",
    "store_sealed_key",
]


_MAGIC = b"TPSEAL1\n"
_MAX_BLOB = 64 * 1024


class Sealer(Protocol):
    """Encrypts data under a key bound to this TEE (or, in development, a constant)."""

    @property
    def provider(self) -> str: ...

    def seal(self, plaintext: bytes, label: str) -> bytes: ...

    def unseal(self, blob: bytes, label: str) -> bytes: ...


class _AESGCMSealer:
    """Shared AES-256-GCM sealing over a 32-byte key; subclasses supply key and name."""

    def __init__(self, key: bytes, provider: str) -> None:
        if len(key) != 32:
            raise ValueError("sealing key must be 32 bytes")
        if not 0 < len(provider.encode()) < 256:
            raise ValueError("provider name must be 1-255 bytes")
        self._aead = AESGCM(key)
        self._provider = provider

    @property
    def provider(self) -> str:
        return self._provider

    def _aad(self, label: str) -> bytes:
        return _MAGIC + self._provider.encode() + b"\0" + label.encode()

    def seal(self, plaintext: bytes, label: str) -> bytes:
        nonce = os.urandom(12)
        p = self._provider.encode()
        ct = self._aead.encrypt(nonce, plaintext, self._aad(label))
        return _MAGIC + bytes([len(p)]) + p + nonce + ct

    def unseal(self, blob: bytes, label: str) -> bytes:
        if len(blob) > _MAX_BLOB:
            raise SealError(f"sealed blob too large ({len(blob)} bytes)")
        if not blob.startswith(_MAGIC) or len(blob) < len(_MAGIC) + 1:
            raise SealError("not a sealed blob")
        n = blob[len(_MAGIC)]
        start = len(_MAGIC) + 1
        provider = blob[start : start + n].decode(errors="replace")
        if provider != self._provider:
            raise SealError(f"sealed by provider {provider!r}, this is {self._provider!r}")
        body = blob[start + n :]
        if len(body) < 12 + 16:
            raise SealError("sealed blob truncated")
        try:
            return self._aead.decrypt(body[:12], body[12:], self._aad(label))
        except InvalidTag as e:  # InvalidTag carries no message; say what it means
            raise SealError(f"sealed blob for {label!r} failed authentication") from e


# The development sealing key is public by construction: derived from this constant.
_INSECURE_DEV_SECRET = b"teeproxy INSECURE development sealing key - not secret, not a TEE"


class InsecureDevSealer(_AESGCMSealer):
    """Development sealer whose key is a published constant: no protection at all.

    It exists so that development runs exercise the same sealed-storage code paths as a
    TEE. Production configurations must use a TEE sealing provider.
    """

    PROVIDER = "insecure-development"

    def __init__(self) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"teeproxy-seal").derive(
            _INSECURE_DEV_SECRET
        )
        super().__init__(key, self.PROVIDER)


def generate_p256() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key generated in this process."""
    return ec.generate_private_key(ec.SECP256R1())


def spki_sha256(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo: the key's fingerprint in logs and evidence."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` so that a crash leaves either the old file or the new one, whole.

    Temp file in the same directory, created with ``mode`` (never wider), fsync, rename,
    then fsync of the directory so the rename itself is durable.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def store_sealed_key(path: Path, key: ec.EllipticCurvePrivateKey, sealer: Sealer) -> None:
    """Seal a private key (PKCS#8 DER) and write it atomically with mode 0600."""
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(path, sealer.seal(der, path.name))
    log.info(
        "stored sealed key %s (spki sha256 %s, sealer %s)",
        path,
        spki_sha256(key.public_key()).hex()[:16],
        sealer.provider,
    )


def load_sealed_key(path: Path, sealer: Sealer) -> ec.EllipticCurvePrivateKey:
    """Read and unseal a key written by :func:`store_sealed_key`."""
    blob = path.read_bytes()
    der = sealer.unseal(blob, path.name)
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SealError(f"{path}: sealed key is not an EC key")
    return key


def encrypted_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    """The key as PKCS#8 PEM encrypted under a fresh random password: (pem, password).

    Used to hand a key to OpenSSL, which loads keys only from files: the file it reads is
    never plaintext.
    """
    password = secrets.token_bytes(32)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )
    return pem, password
