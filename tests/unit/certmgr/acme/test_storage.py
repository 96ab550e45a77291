"""certmgr.acme, acme_config, acme_store: config rules, CSR, Retry-After, verification, storage."""

from __future__ import annotations

import datetime as dt
import json
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.acme.client import _parse_retry_after, generate_cert_key, make_csr
from certmgr.acme.settings import valid_dns_name
from certmgr.acme.storage import AcmeStore, verify_issued
from certmgr.errors import IssuedCertError
from certmgr.keys import InsecureDevSealer
from proxy.config import loads
from proxy.errors import ConfigError

NOW = dt.datetime.now(dt.UTC)


def acme(extra: str) -> str:
    names = "" if "names =" in extra else 'names = ["a.example.com"]\n'
    return f"[acme]\nenabled = true\n{names}{extra}\n"


def test_default_config_has_acme_disabled_and_dev_ca_path_unchanged() -> None:
    cfg = loads("")
    assert not cfg.acme.enabled
    assert cfg.acme.key_type == "p256"
    assert cfg.acme.directory_urls == ("https://acme-v02.api.letsencrypt.org/directory",)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("names = []", "acme.names"),
        ('names = ["A.example.com"]', "acme.names[0]"),
        ('directory_urls = ["http://ca.example/dir"]', "acme.directory_urls[0]"),
        ('contact = ["ops@example.com"]', "acme.contact[0]"),
        ('key_type = "rsa1024"', "acme.key_type"),
        ('profile = "gold"', "acme.profile"),
        ('challenge = "dns-02"', "acme.challenge"),
        ('eab_kid_env = "KID"', "acme.eab_hmac_env"),
        ('challenge = "dns-01"', "acme.dns_update_server"),
        (
            'names = ["*.example.com"]\nchallenge_overrides = ["*.example.com=http-01"]',
            "acme.challenge_overrides",
        ),
        ('challenge_overrides = ["b.example.com=dns-01"]', "acme.challenge_overrides[0]"),
        ("retry_base = 0", "acme.retry_base"),
        ("retry_max = 1.0", "acme.retry_max"),
        ("emergency_fraction = 0.9", "acme.emergency_fraction"),
        ('tsig_algorithm = "hmac-md5"', "acme.tsig_algorithm"),
    ],
)
def test_acme_config_errors_name_the_field(extra: str, field: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(acme(extra))
    assert e.value.field == field


def test_challenge_selection_per_name() -> None:
    cfg = loads(
        acme(
            'names = ["a.example.com", "b.example.com", "*.example.com"]\n'
            'challenge = "tls-alpn-01"\nchallenge_overrides = ["b.example.com=http-01"]\n'
            'dns_update_server = "127.0.0.1:53"\ntsig_key_name = "k"\ntsig_secret_env = "S"'
        )
    ).acme
    assert cfg.challenge_for("a.example.com") == "tls-alpn-01"
    assert cfg.challenge_for("b.example.com") == "http-01"
    assert cfg.challenge_for("*.example.com") == "dns-01"


def test_valid_dns_name() -> None:
    assert valid_dns_name("*.a.example")
    assert not valid_dns_name("a.*.example")
    assert not valid_dns_name("-a.example")
    assert not valid_dns_name("example")
    assert not valid_dns_name("a" * 64 + ".example")


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


@pytest.fixture(scope="module")
def chain() -> tuple[bytes, ec.EllipticCurvePrivateKey, trustme.CA]:
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    inter = ca.create_child_ca(key_type=trustme.KeyType.ECDSA)
    leaf = inter.issue_cert("a.example", "b.example", key_type=trustme.KeyType.ECDSA)
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return b"".join(b.bytes() for b in leaf.cert_chain_pems), key, ca


def test_verify_issued_accepts_good_chain(
    chain: tuple[bytes, ec.EllipticCurvePrivateKey, trustme.CA],
) -> None:
    pem, key, _ = chain
    assert len(verify_issued(pem, key, ("a.example", "b.example"), NOW)) >= 2


def test_verify_issued_rejects(chain: tuple[bytes, ec.EllipticCurvePrivateKey, trustme.CA]) -> None:
    pem, key, _ = chain
    with pytest.raises(IssuedCertError, match=r"does not cover c\.example"):
        verify_issued(pem, key, ("a.example", "c.example"), NOW)
    with pytest.raises(IssuedCertError, match="key does not match"):
        verify_issued(pem, generate_cert_key("p256"), ("a.example",), NOW)
    with pytest.raises(IssuedCertError, match="not valid now"):
        verify_issued(pem, key, ("a.example",), dt.datetime(1999, 1, 1, tzinfo=dt.UTC))
    certs = x509.load_pem_x509_certificates(pem)
    other = trustme.CA(key_type=trustme.KeyType.ECDSA).cert_pem.bytes()
    broken = certs[0].public_bytes(serialization.Encoding.PEM) + other
    with pytest.raises(IssuedCertError, match="chain link"):
        verify_issued(broken, key, ("a.example",), NOW)


def test_store_roundtrip_reuse_and_evidence(
    tmp_path: Path, chain: tuple[bytes, ec.EllipticCurvePrivateKey, trustme.CA]
) -> None:
    pem, key, _ = chain
    store = AcmeStore(tmp_path, InsecureDevSealer())
    assert store.load_usable(("a.example",), NOW) is None
    store.save_cert(pem, key, "https://ca/dir", ("a.example",), "https://ca/acct/1")
    for f in ("cert.pem", "cert.key.sealed", "cert.json", "evidence.json"):
        assert stat.S_IMODE((tmp_path / "acme" / f).stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in (tmp_path / "acme" / "cert.key.sealed").read_bytes()
    got = store.load_usable(("a.example",), NOW)
    assert got is not None and got.chain_pem == pem
    # Names changed in the config, or the certificate expired: not reused.
    assert store.load_usable(("a.example", "z.example"), NOW) is None
    assert store.load_usable(("a.example",), dt.datetime(1999, 1, 1, tzinfo=dt.UTC)) is None
    # Evidence lists every key ever used, once each.
    store.save_cert(pem, key, "https://ca/dir", ("a.example",), "https://ca/acct/1")
    ev = json.loads((tmp_path / "acme" / "evidence.json").read_text())
    assert ev["account_uri"] == "https://ca/acct/1"
    assert len(ev["keys"]) == 1


def test_torn_pair_is_not_served(
    tmp_path: Path, chain: tuple[bytes, ec.EllipticCurvePrivateKey, trustme.CA]
) -> None:
    """A crash between writing the new key and the new chain leaves a mismatched pair."""
    pem, key, _ = chain
    store = AcmeStore(tmp_path, InsecureDevSealer())
    store.save_cert(pem, key, "https://ca/dir", ("a.example",), "u")
    from certmgr.keys import store_sealed_key

    store_sealed_key(tmp_path / "acme" / "cert.key.sealed", generate_cert_key("p256"), store.sealer)
    assert store.load_usable(("a.example",), NOW) is None


def test_account_key_is_sealed_and_stable(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path, InsecureDevSealer())
    k1 = store.account_key("https://ca/dir")
    k2 = store.account_key("https://ca/dir")
    assert k1.private_numbers() == k2.private_numbers()
    assert store.account_key("https://other/dir").private_numbers() != k1.private_numbers()
    files = list((tmp_path / "acme" / "accounts").rglob("account.key.sealed"))
    assert len(files) == 2
    assert all(b"PRIVATE KEY" not in f.read_bytes() for f in files)
