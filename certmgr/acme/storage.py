"""Sealed storage of ACME accounts and certificates in the state directory.

Layout under ``STATE/acme/`` (every file written atomically, mode 0600; keys only sealed)::

    accounts/<sha256(directory url)[:16]>/account.key.sealed   account key (P-256)
    accounts/<...>/account.json                                {"directory", "uri"}
    cert.pem                                                   current chain (public)
    cert.key.sealed                                            its private key, sealed
    cert.json                                     {"directory", "names", "spki_sha256"}
    evidence.json                                 {"account_uri", "keys": [spki hex, ...]}

``evidence.json`` is append-only in spirit: every certificate key the enclave ever used is
listed, so an auditor can match each Certificate Transparency entry against it.

:func:`verify_issued` is the gate before a certificate is stored or served: chain links
verify, the names are covered, the key matches and the certificate is valid now.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.errors import IssuedCertError
from certmgr.keys import (
    Sealer,
    atomic_write,
    generate_p256,
    load_sealed_key,
    spki_sha256,
    store_sealed_key,
)
from certmgr.log import acme_log as log

__all__ = [
    "AcmeStore",
    "StoredCert",
    "verify_issued",
]


_MAX_JSON = 64 * 1024


def _covers(cert_names: set[str], wanted: str) -> bool:
    return wanted in cert_names


def verify_issued(
    chain_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    names: tuple[str, ...],
    now: dt.datetime,
) -> list[x509.Certificate]:
    """Check a chain before use: links, names, key match, validity (pure)."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError as e:
        raise IssuedCertError(f"unparseable chain: {e}") from e
    leaf = chain[0]
    for child, parent in itertools.pairwise(chain):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise IssuedCertError(
                f"chain link {child.subject.rfc4514_string()} does not verify"
            ) from e
    if spki_sha256(leaf.public_key()) != spki_sha256(key.public_key()):  # type: ignore[arg-type]
        raise IssuedCertError("certificate key does not match the key generated for it")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as e:
        raise IssuedCertError("certificate has no subjectAltName") from e
    got = {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    missing = [n for n in names if not _covers(got, n)]
    if missing:
        raise IssuedCertError(f"certificate does not cover {', '.join(missing)}")
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise IssuedCertError(
            f"certificate not valid now ({leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    return chain


@dataclass(frozen=True, slots=True)
class StoredCert:
    chain_pem: bytes
    key: ec.EllipticCurvePrivateKey
    directory: str
    names: tuple[str, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.chain_pem)


def _read_json(path: Path) -> dict[str, object]:
    with path.open("rb") as f:
        raw = f.read(_MAX_JSON + 1)
    if len(raw) > _MAX_JSON:
        raise ValueError(f"{path}: larger than {_MAX_JSON} bytes")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _write_json(path: Path, data: object) -> None:
    atomic_write(path, json.dumps(data, indent=1, sort_keys=True).encode() + b"\n")


class AcmeStore:
    """The ``STATE/acme`` directory (blocking I/O: call from the ACME thread)."""

    def __init__(self, state_dir: str | Path, sealer: Sealer) -> None:
        self.root = Path(state_dir) / "acme"
        self.sealer = sealer

    # -- accounts -------------------------------------------------------------------------

    def _account_dir(self, directory: str) -> Path:
        return self.root / "accounts" / hashlib.sha256(directory.encode()).hexdigest()[:16]

    def account_key(self, directory: str, generate: bool = True) -> ec.EllipticCurvePrivateKey:
        path = self._account_dir(directory) / "account.key.sealed"
        if path.exists():
            return load_sealed_key(path, self.sealer)
        if not generate:
            raise FileNotFoundError(path)
        key = generate_p256()
        store_sealed_key(path, key, self.sealer)
        return key

    def account_uri(self, directory: str) -> str | None:
        path = self._account_dir(directory) / "account.json"
        try:
            uri = _read_json(path).get("uri")
        except FileNotFoundError:
            return None
        return uri if isinstance(uri, str) else None

    def export_account(self, directory: str) -> tuple[ec.EllipticCurvePrivateKey, str] | None:
        """The account key and URI for ``directory``, or None before the first order."""
        uri = self.account_uri(directory)
        if uri is None:
            return None
        try:
            return self.account_key(directory, generate=False), uri
        except FileNotFoundError:
            return None

    def install_account(self, directory: str, key: ec.EllipticCurvePrivateKey, uri: str) -> None:
        """Use an account created elsewhere (a cluster's shared account): key, then URI."""
        store_sealed_key(self._account_dir(directory) / "account.key.sealed", key, self.sealer)
        self.save_account(directory, uri)

    def save_account(self, directory: str, uri: str) -> None:
        _write_json(
            self._account_dir(directory) / "account.json", {"directory": directory, "uri": uri}
        )

    # -- certificate ----------------------------------------------------------------------

    def save_cert(
        self,
        chain_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        directory: str,
        names: tuple[str, ...],
        account_uri: str,
    ) -> None:
        """Store a verified certificate; the key first, so a crash never pairs a new cert
        with an old key (a torn pair fails the key-match check on load and is re-ordered)."""
        spki = spki_sha256(key.public_key()).hex()
        store_sealed_key(self.root / "cert.key.sealed", key, self.sealer)
        atomic_write(self.root / "cert.pem", chain_pem)
        _write_json(
            self.root / "cert.json",
            {"directory": directory, "names": list(names), "spki_sha256": spki},
        )
        self.record_evidence(account_uri, spki)

    def load_cert(self) -> StoredCert | None:
        """The stored certificate and key, or None when there is none."""
        pem_path = self.root / "cert.pem"
        if not pem_path.exists():
            return None
        meta = _read_json(self.root / "cert.json")
        key = load_sealed_key(self.root / "cert.key.sealed", self.sealer)
        names = meta.get("names")
        directory = meta.get("directory")
        if not isinstance(names, list) or not isinstance(directory, str):
            raise ValueError(f"{self.root / 'cert.json'}: malformed")
        return StoredCert(pem_path.read_bytes(), key, directory, tuple(str(n) for n in names))

    def load_usable(self, names: tuple[str, ...], now: dt.datetime) -> StoredCert | None:
        """The stored certificate if it covers ``names``, matches its key and is valid now."""
        try:
            stored = self.load_cert()
        except (OSError, ValueError) as e:
            log.warning("stored ACME certificate unusable: %s", e)
            return None
        if stored is None:
            return None
        try:
            verify_issued(stored.chain_pem, stored.key, names, now)
        except IssuedCertError as e:
            log.info("stored ACME certificate not reused: %s", e)
            return None
        return stored

    def cert_pem(self) -> bytes | None:
        try:
            return (self.root / "cert.pem").read_bytes()
        except FileNotFoundError:
            return None

    # -- evidence -------------------------------------------------------------------------

    def evidence(self) -> dict[str, object]:
        try:
            return _read_json(self.root / "evidence.json")
        except FileNotFoundError:
            return {"account_uri": None, "keys": []}

    def record_evidence(self, account_uri: str, spki_hex: str) -> None:
        ev = self.evidence()
        keys = ev.get("keys")
        keys = [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []
        if spki_hex not in keys:
            keys.append(spki_hex)
        _write_json(
            self.root / "evidence.json",
            {"account_uri": account_uri, "keys": keys, "format": "teeproxy-acme-evidence/1"},
        )
