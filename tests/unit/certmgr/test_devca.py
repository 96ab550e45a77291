"""certmgr.devca: the development CA: persistent sealed root, leaves that verify, renewal at
2/3 of life."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from certmgr.devca import DevCA, load_stored_leaf, renewal_due
from certmgr.keys import InsecureDevSealer

NAMES = ("localhost", "127.0.0.1", "::1")
WEEK = dt.timedelta(days=7)
T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


@pytest.fixture
def sealer() -> InsecureDevSealer:
    return InsecureDevSealer()


def verify(
    leaf: x509.Certificate, root: x509.Certificate, name: str, at: dt.datetime
) -> list[x509.Certificate]:
    """Path-validate ``leaf`` for ``name`` against ``root`` alone (WebPKI server profile)."""
    try:
        subject: x509.verification.Subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store([root])).time(at).build_server_verifier(subject)
    return verifier.verify(leaf, [])


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_then_reload_gives_the_same_root(tmp_path: Path, sealer: InsecureDevSealer) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    again = DevCA.load_or_create(tmp_path, sealer, now=T0 + dt.timedelta(days=1))
    assert again.root_cert == ca.root_cert
    assert again._root_key.private_numbers() == ca._root_key.private_numbers()
    d = tmp_path / "dev-ca"
    assert ca.root_pem_path == d / "root.pem"
    assert x509.load_pem_x509_certificate((d / "root.pem").read_bytes()) == ca.root_cert
    basic = ca.root_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca and basic.path_length == 0


def test_root_key_on_disk_is_sealed_and_private(tmp_path: Path, sealer: InsecureDevSealer) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    ca.current_leaf(NAMES, WEEK, now=T0)
    d = tmp_path / "dev-ca"
    assert sorted(p.name for p in d.iterdir()) == [
        "leaf.key.sealed",
        "leaf.pem",
        "root.key.sealed",
        "root.pem",
    ]
    der = ca._root_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    for name in ("root.key.sealed", "leaf.key.sealed"):
        data = (d / name).read_bytes()
        assert data.startswith(b"TPSEAL1")
        assert der not in data
        assert _mode(d / name) == 0o600
    for path in d.iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes(), path
    assert _mode(d / "root.pem") == 0o644
    assert _mode(d) == 0o700


@pytest.mark.parametrize("name", NAMES)
def test_leaf_chain_verifies_against_root(
    tmp_path: Path, sealer: InsecureDevSealer, name: str
) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    leaf = ca.current_leaf(NAMES, WEEK, now=T0)
    chain = verify(leaf.cert, ca.root_cert, name, T0 + dt.timedelta(hours=1))
    assert chain[0] == leaf.cert and chain[-1] == ca.root_cert
    # The stored chain is leaf then root, and the stored key belongs to the leaf.
    stored = load_stored_leaf(tmp_path, sealer)
    assert x509.load_pem_x509_certificates(stored.chain_pem) == [leaf.cert, ca.root_cert]
    assert stored.key.public_key() == leaf.cert.public_key()
    usage = leaf.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_leaf_does_not_verify_for_other_names_or_roots(
    tmp_path: Path, sealer: InsecureDevSealer
) -> None:
    ca = DevCA.load_or_create(tmp_path / "a", sealer, now=T0)
    other = DevCA.load_or_create(tmp_path / "b", sealer, now=T0)
    leaf = ca.current_leaf(NAMES, WEEK, now=T0)
    with pytest.raises(VerificationError):
        verify(leaf.cert, ca.root_cert, "example.com", T0)
    with pytest.raises(VerificationError):
        verify(leaf.cert, other.root_cert, "localhost", T0)


def test_leaf_lifetime_and_renewal_time(tmp_path: Path, sealer: InsecureDevSealer) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    leaf = ca.current_leaf(NAMES, WEEK, now=T0)
    assert leaf.cert.not_valid_after_utc == T0 + WEEK
    assert leaf.cert.not_valid_before_utc <= T0
    life = leaf.cert.not_valid_after_utc - leaf.cert.not_valid_before_utc
    assert renewal_due(leaf.cert) == leaf.cert.not_valid_before_utc + life * 2 / 3


def test_leaf_reused_while_fresh_reissued_past_two_thirds(
    tmp_path: Path, sealer: InsecureDevSealer
) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    first = ca.current_leaf(NAMES, WEEK, now=T0)
    due = renewal_due(first.cert)
    for later in (T0 + dt.timedelta(days=1), due - dt.timedelta(seconds=1)):
        same = ca.current_leaf(NAMES, WEEK, now=later)
        assert same.cert.serial_number == first.cert.serial_number
    # A fresh process (reloading the CA from disk) reuses it too.
    reloaded = DevCA.load_or_create(tmp_path, sealer, now=T0 + dt.timedelta(days=2))
    assert reloaded.current_leaf(NAMES, WEEK, now=T0 + dt.timedelta(days=2)).cert == first.cert

    renewed = ca.current_leaf(NAMES, WEEK, now=due + dt.timedelta(seconds=1))
    assert renewed.cert.serial_number != first.cert.serial_number
    assert renewed.key.public_key() != first.key.public_key()
    assert renewed.cert.not_valid_after_utc == due + dt.timedelta(seconds=1) + WEEK
    assert load_stored_leaf(tmp_path, sealer).cert == renewed.cert


def test_changed_names_reissue(tmp_path: Path, sealer: InsecureDevSealer) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    first = ca.current_leaf(NAMES, WEEK, now=T0)
    more = ca.current_leaf((*NAMES, "dev.internal"), WEEK, now=T0)
    assert more.cert.serial_number != first.cert.serial_number
    verify(more.cert, ca.root_cert, "dev.internal", T0)
    fewer = ca.current_leaf(("localhost",), WEEK, now=T0)
    assert fewer.cert.serial_number != more.cert.serial_number
    with pytest.raises(VerificationError):
        verify(fewer.cert, ca.root_cert, "127.0.0.1", T0)
    # Same names in another order or spelling of the IP: no reissue.
    again = ca.current_leaf(("localhost",), WEEK, now=T0)
    assert again.cert.serial_number == fewer.cert.serial_number


def test_leaf_capped_at_root_expiry(tmp_path: Path, sealer: InsecureDevSealer) -> None:
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    root_end = ca.root_cert.not_valid_after_utc
    late = root_end - dt.timedelta(days=31, hours=-1)
    leaf = ca.issue_leaf(NAMES, dt.timedelta(days=90), now=late)
    assert leaf.cert.not_valid_after_utc == root_end


def test_root_near_expiry_is_replaced_and_leaf_reissued(
    tmp_path: Path, sealer: InsecureDevSealer
) -> None:
    """A new root (same subject name) must not keep serving a leaf the old root signed."""
    ca = DevCA.load_or_create(tmp_path, sealer, now=T0)
    root_end = ca.root_cert.not_valid_after_utc
    before = root_end - dt.timedelta(days=31)
    old_leaf = DevCA.load_or_create(tmp_path, sealer, now=before).current_leaf(
        NAMES, WEEK, now=before
    )
    after = root_end - dt.timedelta(days=29)  # 2 days later: the old leaf is still fresh
    rotated = DevCA.load_or_create(tmp_path, sealer, now=after)
    assert rotated.root_cert != ca.root_cert
    leaf = rotated.current_leaf(NAMES, WEEK, now=after)
    assert leaf.cert.serial_number != old_leaf.cert.serial_number
    verify(leaf.cert, rotated.root_cert, "localhost", after)
    assert x509.load_pem_x509_certificates(leaf.chain_pem)[1] == rotated.root_cert
