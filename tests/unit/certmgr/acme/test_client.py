"""certmgr.acme.client: the CSR and its key, Retry-After parsing (RFC 9110 10.2.3),
bounded."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.acme.client import _parse_retry_after, generate_cert_key, make_csr

NOW = dt.datetime.now(dt.UTC)


def test_csr_names_and_key() -> None:
    key = generate_cert_key("p256")
    csr = x509.load_pem_x509_csr(make_csr(key, ("a.example", "*.a.example")))
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "*.a.example"]
    assert csr.is_signature_valid
    assert isinstance(generate_cert_key("p384").curve, ec.SECP384R1)


def test_retry_after_parsing() -> None:
    assert _parse_retry_after("120", NOW) == NOW + dt.timedelta(seconds=120)
    assert _parse_retry_after("99999999", NOW) == NOW + dt.timedelta(days=1)  # bounded
    when = _parse_retry_after("Wed, 21 Oct 2099 07:28:00 GMT", NOW)
    assert when == NOW + dt.timedelta(days=1)
    assert _parse_retry_after("garbage", NOW) is None
    assert _parse_retry_after("1" * 100, NOW) is None
