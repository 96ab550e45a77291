"""A local development certificate authority, kept in the state directory.

Like Caddy's internal issuer: a long-lived root (ECDSA P-256) whose certificate is written
to ``STATE/dev-ca/root.pem`` for clients to trust, and short-lived leaf certificates for the
configured development names. Both private keys are stored only sealed (see
:mod:`certmgr.keys`); with the insecure development sealer that protects nothing, which is
why this CA is for development and the demo only.

Layout under ``STATE/dev-ca/``::

    root.pem            root certificate (public)
    root.key.sealed     root private key, sealed
    leaf.pem            current leaf chain (leaf + root), public
    leaf.key.sealed     current leaf private key, sealed
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certmgr.keys import (
    Sealer,
    atomic_write,
    generate_p256,
    load_sealed_key,
    spki_sha256,
    store_sealed_key,
)
from certmgr.log import tls_log as log

__all__ = ["DevCA", "Leaf", "load_stored_leaf", "renewal_due"]


_ROOT_LIFETIME = dt.timedelta(days=3650)
_BACKDATE = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class Leaf:
    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def renewal_due(cert: x509.Certificate) -> dt.datetime:
    """When a certificate should be replaced: at two thirds of its lifetime."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_before_utc + life * 2 / 3


def _san(names: tuple[str, ...]) -> x509.SubjectAlternativeName:
    general: list[x509.GeneralName] = []
    for n in names:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            general.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(general)


def _cert_names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(
        san.get_values_for_type(x509.DNSName)
    )


class DevCA:
    """The development CA rooted in ``state_dir/dev-ca``."""

    def __init__(
        self,
        directory: Path,
        root_cert: x509.Certificate,
        root_key: ec.EllipticCurvePrivateKey,
        sealer: Sealer,
    ) -> None:
        self.directory = directory
        self.root_cert = root_cert
        self._root_key = root_key
        self._sealer = sealer

    @property
    def root_pem_path(self) -> Path:
        return self.directory / "root.pem"

    @classmethod
    def load_or_create(
        cls, state_dir: Path, sealer: Sealer, *, now: dt.datetime | None = None
    ) -> DevCA:
        """Load the CA from ``state_dir/dev-ca``, creating it on first use."""
        directory = state_dir / "dev-ca"
        cert_path, key_path = directory / "root.pem", directory / "root.key.sealed"
        now = now or dt.datetime.now(dt.UTC)
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = load_sealed_key(key_path, sealer)
            if cert.not_valid_after_utc - now > dt.timedelta(days=30):
                return cls(directory, cert, key, sealer)
            log.warning(
                "development CA root expires %s: creating a new one", cert.not_valid_after_utc
            )
        key = generate_p256()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "teeproxy development CA"),
                x509.NameAttribute(NameOID.COMMON_NAME, "teeproxy INSECURE development root"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _ROOT_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        store_sealed_key(key_path, key, sealer)
        atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
        log.warning(
            "created development CA %s (root spki sha256 %s): trust it only for development",
            cert_path,
            spki_sha256(key.public_key()).hex()[:16],
        )
        return cls(directory, cert, key, sealer)

    def issue_leaf(
        self, names: tuple[str, ...], lifetime: dt.timedelta, *, now: dt.datetime | None = None
    ) -> Leaf:
        """A new P-256 key and a leaf certificate for ``names`` (in memory only)."""
        now = now or dt.datetime.now(dt.UTC)
        key = generate_p256()
        not_after = min(now + lifetime, self.root_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.root_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._root_key.public_key()),
                critical=False,
            )
            .sign(self._root_key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.root_cert.public_bytes(
            serialization.Encoding.PEM
        )
        return Leaf(chain, key, cert)

    def current_leaf(
        self, names: tuple[str, ...], lifetime: dt.timedelta, *, now: dt.datetime | None = None
    ) -> Leaf:
        """The stored leaf if it covers ``names`` and is not due for renewal, else a new one."""
        now = now or dt.datetime.now(dt.UTC)
        cert_path, key_path = self.directory / "leaf.pem", self.directory / "leaf.key.sealed"
        if cert_path.exists() and key_path.exists():
            leaf = load_stored_leaf(self.directory.parent, self._sealer)
            if (
                _cert_names(leaf.cert) == {str(n) for n in _normalise(names)}
                and now < renewal_due(leaf.cert)
                and self._issued_by_root(leaf.cert)
            ):
                return leaf
        leaf = self.issue_leaf(names, lifetime, now=now)
        store_sealed_key(key_path, leaf.key, self._sealer)
        atomic_write(cert_path, leaf.chain_pem, mode=0o644)
        log.info(
            "issued development certificate for %s, valid until %s",
            ", ".join(names),
            leaf.cert.not_valid_after_utc,
        )
        return leaf

    def _issued_by_root(self, cert: x509.Certificate) -> bool:
        """Whether this root signed ``cert``. A replacement root has the same subject name,
        so comparing issuer names would keep serving a leaf signed by the old root."""
        try:
            cert.verify_directly_issued_by(self.root_cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _normalise(names: tuple[str, ...]) -> list[str]:
    out = []
    for n in names:
        try:
            out.append(str(ipaddress.ip_address(n)))
        except ValueError:
            out.append(n)
    return out


def load_stored_leaf(state_dir: Path, sealer: Sealer) -> Leaf:
    """The stored development leaf (what worker processes serve); no root key needed."""
    directory = state_dir / "dev-ca"
    chain_pem = (directory / "leaf.pem").read_bytes()
    key = load_sealed_key(directory / "leaf.key.sealed", sealer)
    return Leaf(chain_pem, key, x509.load_pem_x509_certificate(chain_pem))
