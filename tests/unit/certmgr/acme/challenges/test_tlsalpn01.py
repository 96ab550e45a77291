"""certmgr.acme.challenges.tlsalpn01: the RFC 8737 challenge certificate, ALPN
parsing of real ClientHellos, publishing the challenge sealed."""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from hypothesis import given
from hypothesis import strategies as st

from certmgr.acme.challenges import tlsalpn01
from certmgr.keys import InsecureDevSealer, generate_p256

NOW = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)


def client_hello(alpn: list[str] | None, sni: str = "a.example") -> bytes:
    """A real ClientHello from OpenSSL (memory BIOs): the handshake message, record header cut."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    record = outgoing.read()
    assert record[0] == 22  # handshake record
    return record[5:]


def test_offers_alpn_on_real_client_hellos() -> None:
    assert tlsalpn01.offers_alpn(client_hello(["acme-tls/1"]))
    assert tlsalpn01.offers_alpn(client_hello(["h2", "http/1.1", "acme-tls/1"]))
    assert not tlsalpn01.offers_alpn(client_hello(["h2", "http/1.1"]))
    assert not tlsalpn01.offers_alpn(client_hello(None))
    # A protocol name that merely contains the bytes is not a match.
    assert not tlsalpn01.offers_alpn(client_hello(["xacme-tls/1"]))


def test_offers_alpn_rejects_truncations_and_other_messages() -> None:
    hello = client_hello(["acme-tls/1"])
    for cut in (0, 3, 10, 60, len(hello) // 2, len(hello) - 1):
        assert not tlsalpn01.offers_alpn(hello[:cut])
    assert not tlsalpn01.offers_alpn(b"\x02" + hello[1:])  # ServerHello type
    assert not tlsalpn01.offers_alpn(hello + b"\x00" * 70_000)  # over the size cap


@given(st.binary(max_size=600))
def test_offers_alpn_never_raises(data: bytes) -> None:
    tlsalpn01.offers_alpn(b"\x01" + data)


def test_challenge_certificate_follows_rfc8737() -> None:
    key = generate_p256()
    ka = "token123.thumbprint456"
    cert = tlsalpn01.challenge_certificate("a.example", ka, key, NOW)
    ext = cert.extensions.get_extension_for_oid(tlsalpn01.ACME_IDENTIFIER_OID)
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(ka.encode()).digest()  # type: ignore[attr-defined]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example"]
    assert len(list(san)) == 1
    assert cert.issuer == cert.subject  # self-signed
    cert.verify_directly_issued_by(cert)
    assert tlsalpn01.acme_identifier_digest(cert) == hashlib.sha256(ka.encode()).digest()


def test_publish_and_load_challenge(tmp_path: Path) -> None:
    sealer = InsecureDevSealer()
    tlsalpn01.publish(tmp_path, "a.example", "t.k", sealer, generate_p256(), now=NOW)
    loaded = tlsalpn01.load_published(tmp_path, sealer)
    assert [c.name for c in loaded] == ["a.example"]
    key_file = tmp_path / "acme/challenges/tls-alpn-01/a.example.key.sealed"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in key_file.read_bytes()
    tlsalpn01.remove(tmp_path, "a.example")
    assert tlsalpn01.load_published(tmp_path, sealer) == []
