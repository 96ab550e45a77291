"""Signed inference receipts: the message format, its digest and its encodings (pure).

Owns:
- :class:`Receipt`: one signed statement "this proxy, running measurement ``measurement_id``,
  forwarded a request whose body hashes to ``request_sha256`` and returned a response whose
  body hashes to ``response_sha256``", with the model name and response id when known.
- :func:`typed_data_hash`: the EIP-712 digest that is signed (EIP-712 "Specification of the
  eth_signTypedData JSON RPC", ``encode(domainSeparator, message)``), implemented
  here from keccak and byte concatenation only, so an on-chain verifier can be checked
  against it field by field. Tests cross-check it against eth-account's implementation.
- Signing is :mod:`certmgr.receipts.signing` and verification :mod:`certmgr.receipts.verify`:
  secp256k1 ECDSA over that digest, 65-byte ``r || s || v`` signatures (``v`` in {27, 28},
  low ``s`` as required by EIP-2), recovery with ecrecover semantics.
- :class:`IncrementalHash`: SHA-256 over a body fed in chunks (streaming responses).
- Serialization: strict JSON (:meth:`Receipt.to_json` / :meth:`Receipt.from_json`) and a
  compact binary-in-base64url header form (:meth:`Receipt.to_header` /
  :meth:`Receipt.from_header`), both bounded before decoding.

The exact format is documented in ``docs/RECEIPTS.md``; keep the two in step. No I/O here.

keccak-256 is pycryptodome's; the Ethereum libraries are not imported (the tests
cross-check against eth-account's EIP-712 implementation).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import re
import struct
from dataclasses import dataclass
from typing import Any, Final

from Crypto.Hash import keccak as _pycryptodome_keccak

from certmgr.errors import ReceiptError

__all__ = [
    "DEFAULT_DOMAIN",
    "DOMAIN_NAME",
    "DOMAIN_VERSION",
    "HEADER_NAME",
    "MAX_HEADER_CHARS",
    "MAX_JSON_BYTES",
    "MAX_TEXT_BYTES",
    "RECEIPT_TYPE",
    "RECEIPT_TYPEHASH",
    "SECP256K1_N",
    "Domain",
    "IncrementalHash",
    "Receipt",
    "check_bytes",
    "domain_separator",
    "hash_struct",
    "keccak256",
    "typed_data_hash",
]

DOMAIN_NAME: Final = "teeproxy-receipt"
DOMAIN_VERSION: Final = "1"
RECEIPT_TYPE: Final = (
    "Receipt(bytes32 requestHash,bytes32 responseHash,string model,string responseId,"
    "uint64 timestamp,bytes32 measurementId)"
)

MAX_TEXT_BYTES: Final = 256  # model and response id, UTF-8 encoded
MAX_TIMESTAMP: Final = 2**64 - 1  # uint64, as in the signed type
MAX_JSON_BYTES: Final = 4096  # a well-formed receipt is < 1.2 KiB
MAX_HEADER_CHARS: Final = 1024  # base64url of at most 2 + 189 + 2 * (2 + 256) bytes is 944
HEADER_NAME: Final = "Teeproxy-Receipt"
_HEADER_VERSION: Final = 1
_FIXED: Final = struct.Struct(">B32s32sQ32s20s65s")  # version, hashes, ts, mid, signer, sig

# secp256k1 group order; EIP-2: s must be in the lower half.
SECP256K1_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HEX = re.compile(r"0x[0-9a-fA-F]*", re.ASCII)
_B64URL = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
_JSON_KEYS: Final = frozenset(
    {
        "version",
        "requestHash",
        "responseHash",
        "model",
        "responseId",
        "timestamp",
        "measurementId",
        "signer",
        "signature",
    }
)


# -- EIP-712 -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain. Fields that are ``None`` are left out of ``EIP712Domain``.

    The default (neither configured) is ``EIP712Domain(string name,string version)`` with
    name ``teeproxy-receipt`` and version ``1``: a receipt is not tied to one chain or one
    contract, so any chain's verifier can check it. Setting ``chain_id`` and
    ``verifying_contract`` gives the full ``EIP712Domain(string name,string version,uint256
    chainId,address verifyingContract)`` (field order as in EIP-712).
    """

    name: str = DOMAIN_NAME
    version: str = DOMAIN_VERSION
    chain_id: int | None = None
    verifying_contract: bytes | None = None

    def __post_init__(self) -> None:
        if self.chain_id is not None and not (
            type(self.chain_id) is int and 0 <= self.chain_id < 2**256
        ):
            raise ReceiptError("domain chain_id must be a uint256")
        if self.verifying_contract is not None and (
            type(self.verifying_contract) is not bytes or len(self.verifying_contract) != 20
        ):
            raise ReceiptError("domain verifying_contract must be a 20-byte address")

    def type_string(self) -> str:
        fields = ["string name", "string version"]
        if self.chain_id is not None:
            fields.append("uint256 chainId")
        if self.verifying_contract is not None:
            fields.append("address verifyingContract")
        return f"EIP712Domain({','.join(fields)})"


DEFAULT_DOMAIN: Final = Domain()


def keccak256(data: bytes) -> bytes:
    """keccak256 straight from pycryptodome (eth-utils' ``keccak`` wraps the same code with
    about 8 us of dispatch per call; a receipt takes three). Tests compare the two."""
    return _pycryptodome_keccak.new(digest_bits=256, data=data).digest()


RECEIPT_TYPEHASH: Final = keccak256(RECEIPT_TYPE.encode())


@functools.lru_cache(maxsize=256)
def _text_hash(text: str) -> bytes:
    """keccak256 of a short UTF-8 string that repeats (the model name): cached."""
    return keccak256(text.encode("utf-8"))


def _uint256(value: int) -> bytes:
    return value.to_bytes(32, "big")


@functools.lru_cache(maxsize=16)
def domain_separator(domain: Domain = DEFAULT_DOMAIN) -> bytes:
    """``hashStruct(eip712Domain)`` (EIP-712 "Definition of domainSeparator"); cached."""
    parts = [
        keccak256(domain.type_string().encode()),
        keccak256(domain.name.encode()),
        keccak256(domain.version.encode()),
    ]
    if domain.chain_id is not None:
        parts.append(_uint256(domain.chain_id))
    if domain.verifying_contract is not None:
        parts.append(b"\x00" * 12 + domain.verifying_contract)
    return keccak256(b"".join(parts))


def hash_struct(
    *,
    request_sha256: bytes,
    response_sha256: bytes,
    model: str,
    response_id: str,
    timestamp: int,
    measurement_id: bytes,
) -> bytes:
    """``hashStruct(Receipt)`` (EIP-712 "Definition of hashStruct" / "encodeData").

    ``bytes32`` and ``uint64`` are encoded as one 32-byte word (big endian for the integer);
    ``string`` as ``keccak256`` of its UTF-8 bytes. Arguments are validated first.
    """
    _check_fields(
        request_sha256=request_sha256,
        response_sha256=response_sha256,
        model=model,
        response_id=response_id,
        timestamp=timestamp,
        measurement_id=measurement_id,
    )
    return keccak256(
        RECEIPT_TYPEHASH
        + request_sha256
        + response_sha256
        + _text_hash(model)
        + keccak256(response_id.encode("utf-8"))
        + _uint256(timestamp)
        + measurement_id
    )


def typed_data_hash(
    *,
    request_sha256: bytes,
    response_sha256: bytes,
    model: str,
    response_id: str,
    timestamp: int,
    measurement_id: bytes,
    domain: Domain = DEFAULT_DOMAIN,
) -> bytes:
    """The signed digest: ``keccak256("\\x19\\x01" || domainSeparator || hashStruct(message))``."""
    return keccak256(
        b"\x19\x01"
        + domain_separator(domain)
        + hash_struct(
            request_sha256=request_sha256,
            response_sha256=response_sha256,
            model=model,
            response_id=response_id,
            timestamp=timestamp,
            measurement_id=measurement_id,
        )
    )


# -- the receipt -------------------------------------------------------------------------


def check_bytes(name: str, value: object, size: int) -> None:
    if type(value) is not bytes:
        raise ReceiptError(f"{name} must be bytes, got {type(value).__name__}")
    if len(value) != size:
        raise ReceiptError(f"{name} must be {size} bytes, got {len(value)}")


def _check_text(name: str, value: object) -> None:
    if type(value) is not str:
        raise ReceiptError(f"{name} must be a str, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ReceiptError(f"{name} is not encodable as UTF-8 (lone surrogate)") from None
    if size > MAX_TEXT_BYTES:
        raise ReceiptError(f"{name} is {size} UTF-8 bytes, at most {MAX_TEXT_BYTES} allowed")


def _check_fields(
    *,
    request_sha256: object,
    response_sha256: object,
    model: object,
    response_id: object,
    timestamp: object,
    measurement_id: object,
) -> None:
    check_bytes("request_sha256", request_sha256, 32)
    check_bytes("response_sha256", response_sha256, 32)
    _check_text("model", model)
    _check_text("response_id", response_id)
    if type(timestamp) is not int:
        raise ReceiptError(f"timestamp must be an int, got {type(timestamp).__name__}")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ReceiptError(f"timestamp {timestamp} is outside the uint64 range")
    check_bytes("measurement_id", measurement_id, 32)


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt. Construction validates every field (a :class:`ReceiptError`).

    ``signature`` is ``r || s || v`` (65 bytes, ``v`` in {27, 28}); ``signer`` is the
    20-byte Ethereum address the signature must recover to. A constructed receipt is
    well-formed, not verified: call :func:`verify_receipt`.
    """

    request_sha256: bytes
    response_sha256: bytes
    model: str
    response_id: str
    timestamp: int
    measurement_id: bytes
    signature: bytes
    signer: bytes

    def __post_init__(self) -> None:
        _check_fields(
            request_sha256=self.request_sha256,
            response_sha256=self.response_sha256,
            model=self.model,
            response_id=self.response_id,
            timestamp=self.timestamp,
            measurement_id=self.measurement_id,
        )
        check_bytes("signature", self.signature, 65)
        check_bytes("signer", self.signer, 20)

    def digest(self, domain: Domain = DEFAULT_DOMAIN) -> bytes:
        """The EIP-712 digest the signature is over."""
        return typed_data_hash(
            request_sha256=self.request_sha256,
            response_sha256=self.response_sha256,
            model=self.model,
            response_id=self.response_id,
            timestamp=self.timestamp,
            measurement_id=self.measurement_id,
            domain=domain,
        )

    # -- JSON (the /v1/receipts/{id} body) --

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "requestHash": "0x" + self.request_sha256.hex(),
            "responseHash": "0x" + self.response_sha256.hex(),
            "model": self.model,
            "responseId": self.response_id,
            "timestamp": self.timestamp,
            "measurementId": "0x" + self.measurement_id.hex(),
            "signer": "0x" + self.signer.hex(),
            "signature": "0x" + self.signature.hex(),
        }

    def to_json(self) -> bytes:
        """Compact, key-sorted UTF-8 JSON (see docs/RECEIPTS.md)."""
        return json.dumps(
            self.to_dict(), separators=(",", ":"), sort_keys=True, ensure_ascii=True
        ).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Receipt:
        """Parse :meth:`to_json` output strictly: size cap first, exact key set, exact types,
        ``0x`` + exact-length hex. Anything else is a :class:`ReceiptError`."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise ReceiptError("a JSON receipt must be bytes")
        if len(data) > MAX_JSON_BYTES:
            raise ReceiptError(f"JSON receipt is {len(data)} bytes, at most {MAX_JSON_BYTES}")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise ReceiptError("JSON receipt is not UTF-8") from None
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
            raise ReceiptError(f"JSON receipt does not parse: {exc}") from None
        if not isinstance(obj, dict):
            raise ReceiptError("JSON receipt must be an object")
        keys = frozenset(obj)
        if keys != _JSON_KEYS:
            missing = sorted(_JSON_KEYS - keys)
            extra = sorted(keys - _JSON_KEYS)
            raise ReceiptError(f"JSON receipt keys: missing {missing}, unexpected {extra}")
        if type(obj["version"]) is not int or obj["version"] != 1:
            raise ReceiptError("JSON receipt version must be 1")
        return cls(
            request_sha256=_hex_field(obj, "requestHash", 32),
            response_sha256=_hex_field(obj, "responseHash", 32),
            model=_str_field(obj, "model"),
            response_id=_str_field(obj, "responseId"),
            timestamp=_int_field(obj, "timestamp"),
            measurement_id=_hex_field(obj, "measurementId", 32),
            signer=_hex_field(obj, "signer", 20),
            signature=_hex_field(obj, "signature", 65),
        )

    # -- compact header form --

    def to_header(self) -> str:
        """Unpadded base64url of the binary layout in docs/RECEIPTS.md (one header value)."""
        model = self.model.encode("utf-8")
        rid = self.response_id.encode("utf-8")
        raw = (
            _FIXED.pack(
                _HEADER_VERSION,
                self.request_sha256,
                self.response_sha256,
                self.timestamp,
                self.measurement_id,
                self.signer,
                self.signature,
            )
            + struct.pack(">H", len(model))
            + model
            + struct.pack(">H", len(rid))
            + rid
        )
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def from_header(cls, value: str) -> Receipt:
        """Parse :meth:`to_header` output; only the canonical encoding is accepted."""
        if not isinstance(value, str):
            raise ReceiptError("a receipt header must be a str")
        if len(value) > MAX_HEADER_CHARS:
            raise ReceiptError(f"receipt header is {len(value)} chars, at most {MAX_HEADER_CHARS}")
        if _B64URL.fullmatch(value) is None or len(value) % 4 == 1:
            raise ReceiptError("receipt header is not unpadded base64url")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            raise ReceiptError("receipt header is not unpadded base64url") from None
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != value:
            raise ReceiptError("receipt header is not canonical base64url")
        if len(raw) < _FIXED.size + 4:
            raise ReceiptError(f"receipt header decodes to {len(raw)} bytes, too short")
        version, req, resp, ts, mid, signer, sig = _FIXED.unpack_from(raw)
        if version != _HEADER_VERSION:
            raise ReceiptError(f"receipt header version {version} is not {_HEADER_VERSION}")
        pos = _FIXED.size
        model, pos = _take_text(raw, pos, "model")
        rid, pos = _take_text(raw, pos, "response_id")
        if pos != len(raw):
            raise ReceiptError(f"receipt header has {len(raw) - pos} trailing bytes")
        return cls(
            request_sha256=req,
            response_sha256=resp,
            model=model,
            response_id=rid,
            timestamp=ts,
            measurement_id=mid,
            signature=sig,
            signer=signer,
        )


def _take_text(raw: bytes, pos: int, name: str) -> tuple[str, int]:
    if pos + 2 > len(raw):
        raise ReceiptError(f"receipt header truncated before {name}")
    (size,) = struct.unpack_from(">H", raw, pos)
    pos += 2
    if size > MAX_TEXT_BYTES:
        raise ReceiptError(f"{name} is {size} UTF-8 bytes, at most {MAX_TEXT_BYTES} allowed")
    if pos + size > len(raw):
        raise ReceiptError(f"receipt header truncated inside {name}")
    try:
        text = raw[pos : pos + size].decode("utf-8")
    except UnicodeDecodeError:
        raise ReceiptError(f"{name} is not UTF-8") from None
    return text, pos + size


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ReceiptError(f"JSON receipt repeats key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ReceiptError(f"JSON receipt contains {name}")


def _hex_field(obj: dict[str, Any], key: str, size: int) -> bytes:
    value = obj[key]
    if type(value) is not str:
        raise ReceiptError(f"{key} must be a string")
    if len(value) != 2 + 2 * size or _HEX.fullmatch(value) is None:
        raise ReceiptError(f"{key} must be 0x followed by {2 * size} hex digits")
    return bytes.fromhex(value[2:])


def _str_field(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if type(value) is not str:
        raise ReceiptError(f"{key} must be a string")
    return value


def _int_field(obj: dict[str, Any], key: str) -> int:
    value = obj[key]
    if type(value) is not int:
        raise ReceiptError(f"{key} must be an integer")
    return value


class IncrementalHash:
    """SHA-256 of a body fed in chunks, for bodies that are streamed and never buffered.

    ``update`` in any chunking gives the same :meth:`digest` as ``hashlib.sha256(whole)``;
    ``digest`` does not finalize (more chunks may follow). ``length`` counts bytes fed.
    """

    __slots__ = ("_hash", "length")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.length = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        self._hash.update(chunk)
        self.length += memoryview(chunk).nbytes

    def digest(self) -> bytes:
        return self._hash.digest()
