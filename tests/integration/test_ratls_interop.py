"""Interop: a verifier written from the CCC spec alone accepts what teeproxy serves.

The verifier is tests/helpers/ccc_checker.py: written from the text of the CCC
"interoperable RA-TLS" documents, sharing no code with certmgr/ or proxy/. Scenario:

- a real ``teeproxy serve`` (simulated TEE, on 127.0.0.1) presents its RA-TLS certificate
  and answers the nonce endpoint; the checker accepts both, with the development
  attestation key from the state directory as the only trusted key;
- the same checker accepts the certificates Gramine, the Intel SGX SDK and rats-tls
  published for the CCC interoperability tests (tests/data/ratls/): so it is not tailored
  to teeproxy;
- single faults (a claims byte flipped, a quote byte flipped, evidence moved into a
  certificate of another key, an expired certificate, an unexpected nonce) are each refused
  for exactly the rule they break: so the acceptance above can fail.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import socket
import ssl
import time
from pathlib import Path

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.ratls_store import load_ratls, ratls_dir
from certmgr.attest.simulated import build_simulated_quote
from certmgr.keys import InsecureDevSealer
from tests.helpers import ccc_checker
from tests.helpers.attest import (
    DEV_KEY,
    DEV_KEY_RAW,
    der,
    oid_der,
    sign_tbs,
    spki,
    tbs_with_extensions,
)
from tests.helpers.ccc_checker import Malformed, Report, check_certificate, check_evidence
from tests.helpers.serve import Launch, Served, serve, write_config

NAME = "interop.teeproxy.invalid"
DATA = Path(__file__).resolve().parents[1] / "data" / "ratls"
THIRD_PARTY = {
    "gramine": DATA / "gramine" / "ccc-interop-gramine-cert.pem",
    "intel-sgxsdk": DATA / "intel-sgxsdk" / "ccc-interop-intel-sgxsdk-cert.pem",
    "rats-tls": DATA / "rats-tls" / "ccc-interop-rats-tls-cert.pem",
}
# Inside every third-party validity window (rats-tls: 2023-02-22 .. 2024-02-22).
IN_WINDOW = dt.datetime(2023, 6, 1, tzinfo=dt.UTC)
MRTD_OFFSET = 48 + 16 + 48 + 48 + 8 + 8 + 8  # TDX v4: header, TEE_TCB_SVN .. XFAM
RATLS_OID = "2.23.133.5.4.9"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _der(pem_or_der: bytes) -> bytes:
    if pem_or_der.startswith(b"-----BEGIN"):
        text = pem_or_der.decode().split("-----")[2]
        return base64.b64decode("".join(text.split()))
    return pem_or_der


def _flip(data: bytes, pos: int) -> bytes:
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


def _evidence_value(cert_der: bytes) -> bytes:
    """The 2.23.133.5.4.9 extnValue, found with the checker's DER reader."""
    cert, _ = ccc_checker.read_tlv(cert_der, 0)
    tbs = ccc_checker.children(cert.value)[0]
    exts = [f for f in ccc_checker.children(tbs.value) if f.tag == 0xA3]
    for ext in ccc_checker.children(ccc_checker.children(exts[0].value)[0].value):
        items = ccc_checker.children(ext.value)
        if items[0].value == ccc_checker.EVIDENCE_OID:
            return items[-1].value
    raise AssertionError("no evidence extension")


def _quote_and_claims(cert_der: bytes) -> tuple[bytes, bytes]:
    quote, claims = cbor2.loads(_evidence_value(cert_der)).value
    return quote, claims


def _in_fresh_cert(
    ext_value: bytes,
    *extra: tuple[str, bool, bytes],
    key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """A valid self-signed certificate (of a new key by default) carrying this evidence."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    return sign_tbs(tbs_with_extensions(key, [(RATLS_OID, False, ext_value), *extra]), key)


def _ccc_evidence(claims: dict[str, bytes]) -> bytes:
    """An evidence value as a spec-following producer makes it (simulated quote, DEV_KEY)."""
    buf = cbor2.dumps(claims)
    quote = build_simulated_quote(DEV_KEY, hashlib.sha256(buf).digest() + bytes(32))
    return cbor2.dumps(cbor2.CBORTag(60000, [quote, buf]))


def _cmw(quote: bytes, claims: bytes) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(60000, [quote, claims]))


def _pubkey_hash(alg: int, spki_der: bytes) -> bytes:
    name = {1: "sha256", 7: "sha384", 8: "sha512"}[alg]
    return cbor2.dumps([alg, hashlib.new(name, spki_der).digest()])


# -- the checker itself --------------------------------------------------------------------


def test_the_checker_shares_no_code_with_teeproxy() -> None:
    tree = ast.parse(Path(ccc_checker.__file__).read_text(encoding="utf-8"))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add((node.module or "").split(".")[0] if not node.level else ".")
    assert roots <= {
        "__future__",
        "base64",
        "binascii",
        "dataclasses",
        "datetime",
        "hashlib",
        "struct",
        "typing",
        "cryptography",
    }, roots


# -- third-party certificates --------------------------------------------------------------


@pytest.mark.parametrize("producer", sorted(THIRD_PARTY))
def test_third_party_certificates_pass(producer: str) -> None:
    report = check_certificate(THIRD_PARTY[producer].read_bytes(), at=IN_WINDOW)
    assert report.failures == ()
    assert report.quote_kind == "sgx-quote-v3" and not report.simulated
    assert report.hash_alg == "sha256" and report.critical is False
    extra = {"key_0", "key_1"} if producer == "rats-tls" else set()
    assert set(report.claims) == {"pubkey-hash"} | extra  # rats-tls adds its own claims


def test_an_expired_third_party_certificate_fails_validity() -> None:
    report = check_certificate(THIRD_PARTY["rats-tls"].read_bytes(), at=_now())
    assert report.failures == ("validity",)


@pytest.mark.parametrize("producer", sorted(THIRD_PARTY))
def test_third_party_claims_byte_flipped(producer: str) -> None:
    der = _der(THIRD_PARTY[producer].read_bytes())
    _, claims = _quote_and_claims(der)
    at = der.find(claims)
    assert at > 0 and der.find(claims, at + 1) < 0
    report = check_certificate(_flip(der, at + len(claims) - 1), at=IN_WINDOW)
    if producer == "rats-tls":  # the last byte is in "key_1": ignored, but hashed
        assert report.failures == ("self-signature", "report-data")
    else:  # the last byte is in the pubkey-hash digest
        assert report.failures == ("self-signature", "pubkey-hash", "report-data")


@pytest.mark.parametrize("producer", sorted(THIRD_PARTY))
def test_third_party_evidence_in_another_keys_certificate(producer: str) -> None:
    value = _evidence_value(_der(THIRD_PARTY[producer].read_bytes()))
    report = check_certificate(_in_fresh_cert(value), at=_now())
    assert report.failures == ("pubkey-hash",)


# -- the rules on certificates made here ---------------------------------------------------


@pytest.mark.parametrize("alg", [1, 7, 8])
def test_every_required_hash_algorithm(alg: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    nonce = os.urandom(20)
    claims = {"pubkey-hash": _pubkey_hash(alg, spki(key)), "nonce": nonce}
    cert = _in_fresh_cert(_ccc_evidence(claims), key=key)
    report = check_certificate(
        cert, at=_now(), nonce=nonce, trusted_attestation_keys=(DEV_KEY_RAW,)
    )
    assert report.failures == ()
    assert report.hash_alg == {1: "sha256", 7: "sha384", 8: "sha512"}[alg]
    assert report.simulated and report.quote_kind == "tdx-quote-v4"
    assert check_certificate(cert, at=_now(), nonce=b"other").failures == ("nonce",)


def test_endorsements_extension_shape() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    value = _ccc_evidence({"pubkey-hash": _pubkey_hash(1, spki(key))})
    good = cbor2.dumps(cbor2.CBORTag(60000, [1, *([b"x"] * 7)]))
    bad = cbor2.dumps(cbor2.CBORTag(60000, [1, *([b"x"] * 6)]))
    for endorsement, failures in [(good, ()), (bad, ("endorsements",))]:
        ext = ("2.23.133.5.4.2", False, endorsement)
        report = check_certificate(_in_fresh_cert(value, ext, key=key), at=_now())
        assert report.endorsements and report.failures == failures


@pytest.mark.parametrize(
    ("value", "message"),
    [
        # indefinite-length array inside the tag: the specs want definite lengths
        (b"\xd9\xea\x60\x9f\x41q\x41c\xff", "indefinite"),
        (cbor2.dumps(cbor2.CBORTag(60001, [b"q", b"c"])), "tag 60000"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q", b"c", b"x"])), r"\[bstr quote"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q", cbor2.dumps({"pubkey-hash": 1})])), "byte string"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q", cbor2.dumps({"nonce": b"n"})])), "pubkey-hash"),
        (_cmw(b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([7, bytes(32)])})), "sha384 digest"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q", b"\xa1\x41k\x41v"])), "text keys"),
        (cbor2.dumps(cbor2.CBORTag(60000, [b"q", b"\xa0\x00"])), "after the data item"),
    ],
)
def test_malformed_evidence(value: bytes, message: str) -> None:
    with pytest.raises(Malformed, match=message):
        check_certificate(_in_fresh_cert(value), at=_now())


def test_malformed_certificates() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    value = _ccc_evidence({"pubkey-hash": _pubkey_hash(1, spki(key))})
    with pytest.raises(Malformed, match="twice"):
        check_certificate(_in_fresh_cert(value, (RATLS_OID, False, value)), at=_now())
    with pytest.raises(Malformed, match="no evidence extension"):
        check_certificate(
            sign_tbs(tbs_with_extensions(key, [("1.2.3.4", False, b"x")]), key), at=_now()
        )
    tbs = tbs_with_extensions(key, [(RATLS_OID, False, value)])
    body = tbs[2 + (tbs[1] & 0x7F if tbs[1] & 0x80 else 0) :]
    item = der(0x30, oid_der(RATLS_OID) + der(0x01, b"\x00") + der(0x04, value))
    ext = der(0xA3, der(0x30, item))  # the last field, as tbs_with_extensions writes it
    assert body.endswith(ext)
    twice = sign_tbs(der(0x30, body + ext), key)
    with pytest.raises(Malformed, match="out of place"):  # a second [3] extensions field
        check_certificate(twice, at=_now())
    started = time.monotonic()
    with pytest.raises(Malformed, match="larger than"):
        check_certificate(b"\x30" * (64 * 1024 * 1024), at=_now())
    assert time.monotonic() - started < 0.5


# -- what a running teeproxy serves ----------------------------------------------------------


@pytest.fixture
async def served(launch: Launch, tmp_path: Path) -> Served:
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        backend="http://127.0.0.1:9",
        tls=None,
        workers=1,
        extra=f'[attestation]\nprovider = "simulated"\nserver_name = "{NAME}"\n',
    )
    return await serve(launch, config, workers=1)


def _client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the checker judges the certificate
    return ctx


def _served_certificate(port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _client().wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _served_evidence(port: int, nonce: bytes) -> tuple[bytes, bytes, bytes]:
    """(certificate DER, quote, claims-buffer) of one nonce request on one connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        _client().wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        tls.sendall(
            f"GET /.well-known/tee/attestation?nonce={nonce.hex()} HTTP/1.1\r\n"
            f"Host: {NAME}\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert der is not None
    doc = json.loads(body)
    return der, base64.b64decode(doc["quote"]), base64.b64decode(doc["claims"])


def _dev_key(served: Served) -> bytes:
    """The development attestation key as the quote carries it (x || y)."""
    pem = (ratls_dir(served.config.parent / "state") / "dev-attestation-key.pub.pem").read_bytes()
    pub = serialization.load_pem_public_key(pem)
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    n = pub.public_numbers()
    return n.x.to_bytes(32, "big") + n.y.to_bytes(32, "big")


def _check_served(der: bytes, served: Served) -> Report:
    return check_certificate(der, at=_now(), trusted_attestation_keys=(_dev_key(served),))


@pytest.mark.slow
async def test_served_certificate_and_evidence_pass_the_checker(served: Served) -> None:
    der = await asyncio.to_thread(_served_certificate, served.port)
    report = await asyncio.to_thread(_check_served, der, served)
    assert report.failures == ()
    assert report.quote_kind == "tdx-quote-v4" and report.simulated
    assert report.critical is False and report.hash_alg == "sha256"
    assert not report.endorsements
    assert report.not_before is not None and report.not_after is not None
    assert report.not_after - report.not_before <= dt.timedelta(hours=24)
    assert {"pubkey-hash", "hostname"} <= set(report.claims)

    # Another trusted key: the quote is not from the TEE we trust.
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    other_raw = other.x.to_bytes(32, "big") + other.y.to_bytes(32, "big")
    refused = check_certificate(der, at=_now(), trusted_attestation_keys=(other_raw,))
    assert refused.failures == ("attestation-key-untrusted",)

    # Fresh evidence over the nonce, bound to the certificate of that connection.
    nonce = os.urandom(32)
    cert_der, quote, claims = await asyncio.to_thread(_served_evidence, served.port, nonce)
    assert cert_der == der
    spki_der = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    dev_key = await asyncio.to_thread(_dev_key, served)
    ev = check_evidence(quote, claims, spki_der, nonce=nonce, trusted_attestation_keys=(dev_key,))
    assert ev.failures == () and ev.claims["nonce"] == nonce
    stale = check_evidence(quote, claims, spki_der, nonce=os.urandom(32))
    assert stale.failures == ("nonce",)


@pytest.mark.slow
async def test_single_faults_in_the_served_certificate(served: Served) -> None:
    der = await asyncio.to_thread(_served_certificate, served.port)
    stored = await asyncio.to_thread(
        load_ratls, served.config.parent / "state", InsecureDevSealer()
    )
    assert stored is not None
    _, key = stored  # the RA-TLS key itself (the development sealer unseals it)
    tbs = x509.load_der_x509_certificate(der).tbs_certificate_bytes
    quote, claims = _quote_and_claims(der)
    in_claims = tbs.find(claims) + claims.find(NAME.encode())  # a byte of "hostname"
    in_mrtd = tbs.find(quote) + MRTD_OFFSET

    cases = [
        (sign_tbs(tbs, key), ()),  # control: re-signing alone changes nothing
        (sign_tbs(_flip(tbs, in_claims), key), ("report-data",)),
        (der.replace(tbs, _flip(tbs, in_claims)), ("self-signature", "report-data")),
        (sign_tbs(_flip(tbs, in_mrtd), key), ("quote-signature",)),
        (_in_fresh_cert(_evidence_value(der)), ("pubkey-hash",)),
    ]
    for cert, failures in cases:
        report = await asyncio.to_thread(_check_served, cert, served)
        assert report.failures == failures
