"""Real AWS Nitro attestation documents (tests/data/nitro, see its README.md) and builders of
COSE_Sign1 variants with one property changed, for the Nitro parser and verifier tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cbor2

from certmgr.attest.nitro import NitroDocument, parse_nitro_document

NITRO_DATA = Path(__file__).resolve().parents[1] / "data" / "nitro"
DSTACK_DATA = Path(__file__).resolve().parents[1] / "data" / "dstack"

# The two real documents: (COSE file, SCALE-wrapped file, timestamp in ms).
NSM_QVL = ("nsm-qvl-nitro-attestation.cose", "nsm-qvl-nitro-attestation.scale.bin", 1766668537578)
DSTACK_ATTEST = (
    "dstack-attest-nitro-attestation.cose",
    "dstack-attest-nitro-attestation.scale.bin",
    1766678659346,
)


def nitro_vector(name: str) -> bytes:
    return (NITRO_DATA / name).read_bytes()


def dstack_vector(name: str) -> bytes:
    return (DSTACK_DATA / name).read_bytes()


def pinned_time(vec: tuple[str, str, int]) -> float:
    """A verification time inside the document's leaf validity: its own timestamp."""
    return vec[2] / 1000


def cose_parts(raw: bytes) -> list[object]:
    return list(cbor2.loads(raw))


def rebuild(
    raw: bytes,
    *,
    protected: bytes | None = None,
    unprotected: dict[object, object] | None = None,
    payload: bytes | None = None,
    signature: bytes | None = None,
    tag: bool = False,
) -> bytes:
    """The COSE_Sign1 ``raw`` with parts replaced (the signature is left as it was)."""
    p, u, pl, s = cose_parts(raw)
    parts = [
        p if protected is None else protected,
        u if unprotected is None else unprotected,
        pl if payload is None else payload,
        s if signature is None else signature,
    ]
    return cbor2.dumps(cbor2.CBORTag(18, parts) if tag else parts)


def payload_map(raw: bytes) -> dict[str, object]:
    payload = cose_parts(raw)[2]
    assert isinstance(payload, bytes)
    doc = cbor2.loads(payload)
    assert isinstance(doc, dict)
    return doc


def with_payload(raw: bytes, **fields: object) -> bytes:
    """``raw`` with payload fields replaced (None deletes one); the signature no longer fits."""
    doc = payload_map(raw)
    for k, v in fields.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    return rebuild(raw, payload=cbor2.dumps(doc))


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def doc_with(raw: bytes, **changes: object) -> NitroDocument:
    """The parsed document with fields replaced (to test the chain checks one by one)."""
    return dataclasses.replace(parse_nitro_document(raw), **changes)  # type: ignore[arg-type]
