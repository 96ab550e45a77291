"""Builders for attestation tests: simulated quotes, RA-TLS certificates with chosen faults.

The faults are made at the byte level (DER, CBOR) so that each negative test exercises
exactly one broken property of an otherwise valid certificate. Also the real quote vectors
(tests/data/dcap-qvl), other producers' real RA-TLS certificates (tests/data/ratls) and
:func:`fifo_server`, the kernel side of the FIFO interfaces the
configfs-tsm and Gramine quote providers read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.ratls import RATLS_OID, build_certificate, encode_claims, report_data_for_claims
from certmgr.attest.simulated import build_simulated_quote, raw_public_key

DATA = Path(__file__).resolve().parents[1] / "data" / "dcap-qvl"
T_TDX = 1750414563
T_SGX = 1750416971
T_TDX_OUTDATED = 1771498731

# One development attestation key for the whole test session (generation is cheap anyway).
DEV_KEY = ec.generate_private_key(ec.SECP256R1())
DEV_KEY_RAW = raw_public_key(DEV_KEY.public_key())
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


RATLS_DATA = Path(__file__).resolve().parents[1] / "data" / "ratls"


def ratls_artifact(name: str) -> bytes:
    """A real RA-TLS certificate made by another producer (tests/data/ratls/*/README.txt)."""
    return (RATLS_DATA / name).read_bytes()


def at(unix: int) -> dt.datetime:
    """A pinned verification time as a datetime (certificate validity around it)."""
    return dt.datetime.fromtimestamp(unix, dt.UTC)


def vector(name: str) -> bytes:
    return (DATA / name).read_bytes()


def collateral_text(name: str) -> str:
    return (DATA / f"{name}_collateral.json").read_text()


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def make_ratls(
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    claims_spki: bytes | None = None,
    report_data: bytes | None = None,
    quote: bytes | None = None,
    debug: bool = False,
    extra: dict[str, Any] | None = None,
    raw_extra: dict[str, Any] | None = None,
    lifetime: dt.timedelta = dt.timedelta(hours=24),
    not_before: dt.datetime | None = None,
    endorsements: bytes | None = None,
    cmw: bytes | None = None,
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A DER RA-TLS certificate with a simulated quote; every argument injects one fault.

    ``extra``: teeproxy claims, encoded as teeproxy does; ``raw_extra``: claims put into the
    map as given (for values teeproxy's encoder would refuse to write); ``quote``: a real
    quote or report instead (its report_data then binds nothing of ours); ``endorsements``:
    the ``2.23.133.5.4.2`` value; ``cmw``: the id-pe-cmw value (RFC 9999)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    claims = encode_claims(claims_spki if claims_spki is not None else spki(key), extra)
    if raw_extra:
        claims = cbor2.dumps({**cbor2.loads(claims), **raw_extra}, canonical=True)
    rd = report_data if report_data is not None else report_data_for_claims(claims)
    q = quote if quote is not None else build_simulated_quote(DEV_KEY, rd, debug=debug)
    nb = not_before or NOW - dt.timedelta(minutes=5)
    cert = build_certificate(
        key,
        "attest.test",
        q,
        claims,
        not_before=nb,
        not_after=nb + lifetime,
        endorsements=endorsements,
        cmw=cmw,
    )
    return cert.public_bytes(serialization.Encoding.DER), key


# -- minimal DER encoding, for certificates cryptography would not build --------------------


def der(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes([tag, n]) + value
    lb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(lb)]) + lb + value


def oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytes([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        a = arc
        chunk = [a & 0x7F]
        a >>= 7
        while a:
            chunk.append(0x80 | (a & 0x7F))
            a >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, body)


def resign_with_null_params(
    cert_der: bytes, key: ec.EllipticCurvePrivateKey, tbs: bytes | None = None
) -> bytes:
    """The same TBSCertificate, signed, with ``ecdsa-with-SHA256`` carrying a NULL parameter.

    RFC 5758 3.2 says the parameters MUST be absent; some RA-TLS libraries emit NULL, and
    cryptography >= 45 refuses such certificates.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    tbs = tbs if tbs is not None else cert.tbs_certificate_bytes
    sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    alg = der(0x30, oid_der("1.2.840.10045.4.3.2") + b"\x05\x00")
    return der(0x30, tbs + alg + der(0x03, b"\x00" + sig))


def tbs_with_extensions(
    key: ec.EllipticCurvePrivateKey, exts: list[tuple[str, bool, bytes]]
) -> bytes:
    """A TBSCertificate (v3) with exactly these (oid, critical, value) extensions, in order."""
    name = der(0x30, der(0x31, der(0x30, oid_der("2.5.4.3") + der(0x0C, b"attest.test"))))
    nb = (NOW - dt.timedelta(minutes=5)).strftime("%y%m%d%H%M%SZ").encode()
    na = (NOW + dt.timedelta(hours=20)).strftime("%y%m%d%H%M%SZ").encode()
    ext_items = b""
    for oid, critical, value in exts:
        crit = der(0x01, b"\xff" if critical else b"\x00") if critical is not None else b""
        ext_items += der(0x30, oid_der(oid) + crit + der(0x04, value))
    return der(
        0x30,
        der(0xA0, der(0x02, b"\x02"))
        + der(0x02, b"\x01\x23")
        + der(0x30, oid_der("1.2.840.10045.4.3.2"))
        + name
        + der(0x30, der(0x17, nb) + der(0x17, na))
        + name
        + spki(key)
        + der(0xA3, der(0x30, ext_items)),
    )


def sign_tbs(tbs: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A DER certificate: ``tbs`` signed by ``key`` with ecdsa-with-SHA256 (no parameters)."""
    sig = key.sign(tbs, ec.ECDSA(hashes.SHA256()))
    return der(0x30, tbs + der(0x30, oid_der("1.2.840.10045.4.3.2")) + der(0x03, b"\x00" + sig))


def cmw(quote: bytes, claims: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(60000, [quote, claims]))


def good_extension(key: ec.EllipticCurvePrivateKey) -> bytes:
    claims = encode_claims(spki(key))
    return cmw(build_simulated_quote(DEV_KEY, report_data_for_claims(claims)), claims)


def legacy_quote_for(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Gramine legacy binding: report_data = SHA-256(SPKI) || 0^32."""
    return build_simulated_quote(DEV_KEY, hashlib.sha256(spki(key)).digest() + bytes(32))


# -- the kernel side of a FIFO quote interface ----------------------------------------------


def fifo_server(fifo: Path, respond: Callable[[], bytes], rounds: int) -> threading.Thread:
    """Serve ``rounds`` reads of ``fifo``: each time write ``respond()`` and close."""

    def run() -> None:
        for i in range(rounds):
            with fifo.open("wb") as f:  # blocks until the provider opens it for reading
                f.write(respond())
                # A fresh FIFO for the next round, swapped in before this reader sees EOF:
                # reopening the same FIFO could join the still-open previous reader.
                tmp = fifo.with_name(f".{fifo.name}.{i}")
                os.mkfifo(tmp)
                os.replace(tmp, fifo)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


__all__ = [
    "DEV_KEY",
    "DEV_KEY_RAW",
    "RATLS_OID",
    "T_SGX",
    "T_TDX",
    "T_TDX_OUTDATED",
]
