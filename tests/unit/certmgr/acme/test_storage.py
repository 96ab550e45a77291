"""certmgr.acme.storage: an issued chain verified before use, certificate and
account keys stored sealed, reuse on restart, a torn key/chain pair never served."""

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

from certmgr.acme.client import generate_cert_key
from certmgr.acme.storage import AcmeStore, verify_issued
from certmgr.errors import IssuedCertError
from certmgr.keys import InsecureDevSealer

NOW = dt.datetime.now(dt.UTC)


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
