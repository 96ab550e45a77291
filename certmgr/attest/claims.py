"""The custom claims of interoperable RA-TLS evidence: encoding ours, reading anyone's (pure).

CCC "Interoperable RA-TLS X.509 Cert and Evidence Formats" and "... SGX / TDX Evidence
Tags and Formats" (CCC-Attestation/interoperable-ra-tls, docs/): the claims buffer is a
definite-length CBOR map whose keys are text strings and whose values are ALL byte strings:

- ``"pubkey-hash"`` (required) holds a byte string containing the CBOR encoding of the
  CoSWID ``hash-entry`` ``[hash-alg-id, hash-value]`` (IANA "Named Information Hash
  Algorithm Registry": 1 sha-256, 7 sha-384, 8 sha-512; a verifier must support all three)
  over the DER ``SubjectPublicKeyInfo`` of the certificate's key:
  ``{"pubkey-hash": h'8201 5820 <32 bytes>'}``;
- ``"nonce"`` (optional) holds the nonce itself as a byte string.

Other claims are allowed and ignored by peers. Ours (listed in :data:`TEEPROXY_CLAIMS`)
follow the same rule: the byte string holds the deterministic CBOR (RFC 8949 section
4.2.1) encoding of the value, exactly as ``pubkey-hash`` does. A verifier reads the claims
it knows and ignores the rest (other producers' claims stay raw bytes: rats-tls, for
example, adds ``"key_0": b"value_0\\x00"``).

Earlier teeproxy versions put the values in the map directly (``[1, hash]`` as an array);
such certificates are not read: RA-TLS certificates live at most 24 hours, so none can
still be valid, and reading both encodings would keep a second parser alive for nothing.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import cbor2

from certmgr.errors import RaTlsError

__all__ = [
    "HASH_ALGS",
    "MAX_CLAIMS_SIZE",
    "TEEPROXY_CLAIMS",
    "Claims",
    "encode_claims",
    "parse_claims",
    "strict_loads",
]

MAX_CLAIMS_SIZE: Final = 8 * 1024
MAX_CLAIMS: Final = 64
HASH_ALGS: Final[Mapping[int, tuple[str, int]]] = MappingProxyType(
    {1: ("sha256", 32), 7: ("sha384", 48), 8: ("sha512", 64)}
)
_HASH_IDS: Final = {name: alg for alg, (name, _) in HASH_ALGS.items()}

# teeproxy's own claims and the type of each decoded value.
TEEPROXY_CLAIMS: Final[Mapping[str, type | tuple[type, ...]]] = MappingProxyType(
    {
        "hostname": str,
        "provider": str,
        "not-before": int,
        "not-after": int,
        "signing-address": str,
        "iat": int,
        "acme-account": str,
        "acme-keys": list,
        "gpu-mode": str,  # NVIDIA GPUs: "cc", "devtools" or "off" (certmgr.attest.evidence)
        "gpu-count": int,  # GPU and NVSwitch evidence entries that follow the quote
    }
)


def _dumps(value: object) -> bytes:
    return cbor2.dumps(value, canonical=True)


def strict_loads(data: bytes, what: str) -> Any:
    """Exactly one CBOR data item filling ``data``, in definite-length encoding, at most 8
    levels deep, no map key twice; anything else raises :class:`RaTlsError`.

    The CCC formats are "definite-length encoded" CBOR, and a verifier that read only a
    prefix of the bytes another verifier rejects would disagree with it about the same
    certificate: indefinite lengths and bytes after the item are refused, as RFC 8949
    section 5.3.1 lets a decoder for a restricted format do. ``read_size=1`` keeps the
    stream at the end of the item (cbor2 reads ahead otherwise).
    """
    fp = io.BytesIO(data)
    try:
        value = cbor2.CBORDecoder(
            fp, max_depth=8, allow_duplicate_keys=False, allow_indefinite=False, read_size=1
        ).decode()
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise RaTlsError(f"{what}: malformed CBOR: {e}") from e
    if fp.tell() != len(data):
        raise RaTlsError(f"{what}: {len(data) - fp.tell()} bytes after the CBOR data item")
    return value


def hash_entry(spki_der: bytes, alg: str = "sha256") -> bytes:
    """The CBOR ``hash-entry`` ``[hash-alg-id, hash(SPKI)]`` (what ``pubkey-hash`` holds)."""
    if alg not in _HASH_IDS:
        raise ValueError(f"hash algorithm {alg!r} is not one of sha256, sha384, sha512")
    return _dumps([_HASH_IDS[alg], hashlib.new(alg, spki_der).digest()])


def encode_claims(
    spki_der: bytes | None,
    ours: Mapping[str, object] | None = None,
    *,
    nonce: bytes | None = None,
    hash_alg: str = "sha256",
    spki_sha256: bytes | None = None,
) -> bytes:
    """The claims buffer: ``pubkey-hash`` of ``spki_der`` (or the given ``spki_sha256``),
    the optional ``nonce``, and our claims (each a byte string of its CBOR encoding), as
    deterministic CBOR."""
    if spki_der is not None:
        entry = hash_entry(spki_der, hash_alg)
    elif spki_sha256 is not None and len(spki_sha256) == 32:
        entry = _dumps([1, bytes(spki_sha256)])
    else:
        raise ValueError("pubkey-hash needs the SPKI or its 32-byte SHA-256")
    claims: dict[str, bytes] = {"pubkey-hash": entry}
    if nonce is not None:
        claims["nonce"] = bytes(nonce)
    for name, value in (ours or {}).items():
        want = TEEPROXY_CLAIMS.get(name)
        if want is None:
            raise ValueError(f"{name!r} is not a teeproxy claim")
        if not isinstance(value, want) or isinstance(value, bool):
            raise ValueError(f"claim {name!r} must be {want}, got {type(value).__name__}")
        claims[name] = _dumps(value)
    return _dumps(claims)


@dataclass(frozen=True, slots=True)
class Claims:
    """A parsed claims buffer. ``ours`` holds teeproxy's claims decoded from their CBOR (the
    type is the consumer's to check); ``other`` every other producer's claim, raw (ignored
    by the checks)."""

    raw: bytes
    hash_alg: int
    pubkey_hash: bytes
    nonce: bytes | None = None
    ours: Mapping[str, Any] = field(default_factory=dict)
    other: Mapping[str, Any] = field(default_factory=dict)

    def pubkey_hash_matches(self, spki_der: bytes) -> bool:
        """Whether ``pubkey-hash`` is the hash of this DER SubjectPublicKeyInfo."""
        name, _ = HASH_ALGS[self.hash_alg]
        return hashlib.new(name, spki_der).digest() == self.pubkey_hash

    def get(self, name: str, default: Any = None) -> Any:
        return self.ours.get(name, default)

    def __getitem__(self, name: str) -> Any:
        """One of teeproxy's claims, decoded (KeyError when absent)."""
        return self.ours[name]

    def __contains__(self, name: object) -> bool:
        return name in self.ours

    def view(self) -> dict[str, Any]:
        """A JSON-friendly picture (informative: verifiers use the buffer they hashed)."""
        out: dict[str, Any] = {
            "pubkey-hash": [self.hash_alg, self.pubkey_hash.hex()],
        }
        if self.nonce is not None:
            out["nonce"] = self.nonce.hex()
        out.update({k: _printable(v) for k, v in self.ours.items()})
        out.update({k: _printable(v) for k, v in self.other.items()})
        return out


def _printable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_printable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _printable(x) for k, x in v.items()}
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return repr(v)


def parse_claims(buf: bytes, *, require_pubkey_hash: bool = True) -> Claims:
    """Parse a claims buffer strictly (size capped before decoding; every value a byte
    string; ``pubkey-hash`` a well-formed hash-entry of a supported algorithm)."""
    if len(buf) > MAX_CLAIMS_SIZE:
        raise RaTlsError(f"claims too large ({len(buf)} bytes)")
    top = strict_loads(buf, "claims")
    if not isinstance(top, dict) or not all(isinstance(k, str) for k in top):
        raise RaTlsError("claims must be a CBOR map with text keys")
    if len(top) > MAX_CLAIMS:
        raise RaTlsError(f"claims: more than {MAX_CLAIMS} entries")
    ph = top.get("pubkey-hash")
    if ph is None:
        if require_pubkey_hash:
            raise RaTlsError('claims lack a "pubkey-hash" entry')
        alg, digest = 0, b""
    else:
        if not isinstance(ph, bytes):
            raise RaTlsError('"pubkey-hash" must be a byte string holding a CBOR hash-entry')
        entry = strict_loads(ph, "pubkey-hash")
        if not (isinstance(entry, list | tuple) and len(entry) == 2):
            raise RaTlsError('"pubkey-hash" must hold [hash-alg-id, hash-value]')
        alg, digest = entry
        if isinstance(alg, bool) or not isinstance(alg, int) or alg not in HASH_ALGS:
            raise RaTlsError(f"pubkey-hash algorithm {alg!r} is not 1, 7 or 8")
        if not isinstance(digest, bytes) or len(digest) != HASH_ALGS[alg][1]:
            raise RaTlsError(f"pubkey-hash value is not a {HASH_ALGS[alg][0]} digest")
    nonce = top.get("nonce")
    if nonce is not None and not isinstance(nonce, bytes):
        raise RaTlsError('"nonce" must be a byte string')
    ours: dict[str, Any] = {}
    other: dict[str, Any] = {}
    for name, value in top.items():
        if name in ("pubkey-hash", "nonce"):
            continue
        want = TEEPROXY_CLAIMS.get(name)
        if want is None:
            other[name] = value  # another producer's claim: kept, never interpreted
            continue
        if not isinstance(value, bytes):
            raise RaTlsError(f"claim {name!r} must be a byte string")
        # Decoded, not judged: each consumer checks the form it needs (the signing address
        # has its own failure reason in the verifier), as :data:`TEEPROXY_CLAIMS` says.
        ours[name] = strict_loads(value, f"claim {name!r}")
    return Claims(buf, alg, digest, nonce, MappingProxyType(ours), MappingProxyType(other))
