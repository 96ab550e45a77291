"""dstack's DIP-1 report_data: the key a GetQuote answer names (``dip1::secp256k1c-pk:``...).

Pure: no I/O. Apart from :mod:`certmgr.attest.dstack` because it needs secp256k1
(coincurve) and keccak (pycryptodome), which only a verifier uses: a data-plane worker
that reads its own RA-TLS certificate never loads them.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import coincurve
from Crypto.Hash import keccak

from certmgr.errors import RaTlsError

__all__ = ["DIP1_ED25519", "DIP1_SECP256K1", "Dip1Key", "parse_dip1"]

DIP1_SECP256K1 = b"dip1::secp256k1c-pk:"
DIP1_ED25519 = b"dip1::ed25519-pk:"


@dataclass(frozen=True, slots=True)
class Dip1Key:
    """A key named by dip1 report_data: ``algorithm`` "secp256k1" (SEC1 compressed, 33
    bytes) or "ed25519" (raw, 32 bytes)."""

    algorithm: str
    public_key: bytes

    def eth_address(self) -> bytes:
        """The Ethereum address of a secp256k1 key: Keccak-256 of the uncompressed point
        (without its 0x04 prefix), last 20 bytes."""
        if self.algorithm != "secp256k1":
            raise RaTlsError("only a secp256k1 key has an Ethereum address")
        point = coincurve.PublicKey(self.public_key).format(compressed=False)[1:]
        return keccak.new(data=point, digest_bits=256).digest()[-20:]


_DIP1 = ((DIP1_SECP256K1, "secp256k1", 33), (DIP1_ED25519, "ed25519", 32))


def parse_dip1(report_data: bytes) -> Dip1Key | None:
    """The key of dstack's DIP-1 report_data, None when it is not DIP-1 (no ``dip1::``).

    Format (dstack ``guest-agent/src/rpc_service.rs``, ``GetAttestationForAppKey``): the
    ASCII ``dip1::secp256k1c-pk:`` + base64url without padding of the 33-byte SEC1
    compressed key (exactly 64 bytes), or ``dip1::ed25519-pk:`` + that of the 32-byte key,
    then zero bytes to 64. Strict: 64 bytes, only zeros after the text, the canonical
    base64url of a key of the right size, and for secp256k1 a point on the curve.
    """
    if len(report_data) != 64 or not report_data.startswith(b"dip1::"):
        return None
    text, _, padding = report_data.partition(b"\x00")
    if any(padding):
        raise RaTlsError("dip1 report_data: non-zero bytes after the text")
    for prefix, algorithm, size in _DIP1:
        if not text.startswith(prefix):
            continue
        encoded = text[len(prefix) :]
        try:
            key = base64.urlsafe_b64decode(encoded + b"=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError) as e:
            raise RaTlsError(f"dip1 report_data: key is not base64url: {e}") from e
        if len(key) != size or base64.urlsafe_b64encode(key).rstrip(b"=") != encoded:
            raise RaTlsError(f"dip1 report_data: not the canonical base64url of a {size}-byte key")
        if algorithm == "secp256k1":
            try:
                coincurve.PublicKey(key)
            except ValueError as e:
                raise RaTlsError(f"dip1 report_data: not a secp256k1 point: {e}") from e
        return Dip1Key(algorithm, key)
    raise RaTlsError("dip1 report_data: unknown key type")
