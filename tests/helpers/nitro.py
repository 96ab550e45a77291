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


# -- a dstack app on loopback: its RA-TLS certificate (SCALE V0, simulated TDX quote) ---------


def _compact(n: int) -> bytes:
    assert n < 1 << 30
    if n < 64:
        return bytes([n << 2])
    if n < 1 << 14:
        return ((n << 2) | 1).to_bytes(2, "little")
    return ((n << 2) | 2).to_bytes(4, "little")


def _vec(b: bytes) -> bytes:
    return _compact(len(b)) + b


def scale_v0_tdx(quote: bytes, runtime: list[tuple[str, bytes]], report_data: bytes) -> bytes:
    """dstack's SCALE ``VersionedAttestation::V0`` of a TDX quote with RTMR3 events."""
    from certmgr.attest.dstack import RUNTIME_EVENT_TYPE, event_digest

    out = b"\x00\x00" + _vec(quote) + _compact(len(runtime))
    for name, payload in runtime:
        out += (3).to_bytes(4, "little") + RUNTIME_EVENT_TYPE.to_bytes(4, "little")
        out += _vec(event_digest(name, payload)) + _vec(name.encode()) + _vec(payload)
    out += _compact(len(runtime))
    for name, payload in runtime:
        out += _vec(name.encode()) + _vec(payload)
    return out + report_data + _vec(b'{"os_image_hash":"00"}')


def dstack_app_certificate(dev_key: object, host: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a self-signed dstack-format RA-TLS certificate whose
    quote is SIMULATED (signed by ``dev_key``): report_data = SHA-512("ratls-cert:" || SPKI),
    RTMR3 replayed from app-id / compose-hash / instance-id events, MRCONFIGID v1."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from certmgr.attest.dstack import ATTESTATION_OID, event_digest, ratls_report_data, replay_rtmr
    from certmgr.attest.simulated import build_simulated_quote

    key = ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    compose = bytes(range(32))
    runtime = [("app-id", compose[:20]), ("compose-hash", compose), ("instance-id", b"\x07" * 20)]
    rtmr3 = replay_rtmr([event_digest(n, p) for n, p in runtime])
    rd = ratls_report_data(spki)
    quote = build_simulated_quote(
        dev_key,  # type: ignore[arg-type]
        rd,
        rtmrs=(bytes(48), bytes(48), bytes(48), rtmr3),
        mr_config_id=b"\x01" + compose + bytes(15),
    )
    payload = scale_v0_tdx(quote, runtime, rd)
    assert len(payload) < 1 << 16
    octets = b"\x04\x82" + len(payload).to_bytes(2, "big") + payload
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(ATTESTATION_OID), octets),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
