"""The certificate store: an immutable snapshot of what the TLS listener may present.

A :class:`CertStore` is built whole (off the event loop: building SSL contexts reads files)
and published by assigning it to a :class:`StoreHolder`. The handshake path only reads the
holder's current store and calls the pure :meth:`CertStore.select`: it never awaits, never
locks, and a swap affects only handshakes that start after it. Open connections keep the
context they negotiated.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import ssl
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certmgr.errors import CertError
from certmgr.keys import encrypted_pem

__all__ = [
    "CertEntry",
    "CertStore",
    "StoreHolder",
    "entry_from_files",
    "entry_from_key",
]


ContextFactory = Callable[[], ssl.SSLContext]


@dataclass(frozen=True, slots=True)
class CertEntry:
    """One servable certificate: its names, validity, key fingerprint and ready SSL context."""

    names: frozenset[str]
    not_before: dt.datetime
    not_after: dt.datetime
    spki_sha256: bytes
    source: str
    context: ssl.SSLContext = field(compare=False, repr=False)

    def valid_at(self, now: dt.datetime) -> bool:
        return self.not_before <= now < self.not_after


@dataclass(frozen=True, slots=True)
class CertStore:
    """Immutable SNI -> certificate map. Build with :meth:`build`."""

    entries: tuple[CertEntry, ...]
    strict_sni: bool
    _by_name: Mapping[str, CertEntry] = field(repr=False, compare=False)
    # TLS-ALPN-01 (RFC 8737): name -> challenge context, presented only to acme-tls/1 hellos.
    challenges: Mapping[str, ssl.SSLContext] = field(
        default_factory=lambda: MappingProxyType({}), repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        entries: Iterable[CertEntry],
        *,
        strict_sni: bool = False,
        challenges: Mapping[str, ssl.SSLContext] | None = None,
    ) -> CertStore:
        """Index entries by name; on duplicate names the later-expiring certificate wins."""
        ordered = tuple(entries)
        by_name: dict[str, CertEntry] = {}
        for e in ordered:
            for name in e.names:
                cur = by_name.get(name)
                if cur is None or e.not_after > cur.not_after:
                    by_name[name] = e
        return cls(
            ordered, strict_sni, MappingProxyType(by_name), MappingProxyType(dict(challenges or {}))
        )

    @property
    def default(self) -> CertEntry | None:
        return self.entries[0] if self.entries else None

    def select(self, server_name: str | None) -> CertEntry | None:
        """The certificate for a ClientHello's SNI (pure; no I/O).

        Exact name first, then a wildcard one label up (``*.example.com`` covers
        ``a.example.com`` only, RFC 6125 6.4.3). No SNI, or no match, gives the default
        certificate unless ``strict_sni`` is set, in which case an unknown name gives None
        (the handshake is then refused).
        """
        if server_name:
            name = server_name.rstrip(".").lower()
            hit = self._by_name.get(name)
            if hit is not None:
                return hit
            _, dot, parent = name.partition(".")
            if dot:
                hit = self._by_name.get("*." + parent)
                if hit is not None:
                    return hit
            if self.strict_sni:
                return None
        return self.default

    def earliest_expiry(self) -> dt.datetime | None:
        return min((e.not_after for e in self.entries), default=None)


class StoreHolder:
    """The one mutable cell: ``current`` is replaced whole, never modified."""

    __slots__ = ("current",)

    def __init__(self, store: CertStore) -> None:
        self.current = store


def _names(cert: x509.Certificate) -> frozenset[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    dns = {n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)}
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return frozenset(dns | ips)


def _load_chain(pem: bytes, origin: str) -> list[x509.Certificate]:
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise CertError(f"{origin}: no valid PEM certificate: {e}") from e
    return chain


def _make_context(
    factory: ContextFactory, chain_pem: bytes, key_pem: bytes, password: bytes | None
) -> ssl.SSLContext:
    """Load chain and (encrypted) key into a new context via a private temp file."""
    ctx = factory()
    fd, tmp = tempfile.mkstemp(prefix="teeproxy-cert-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(chain_pem.rstrip(b"\n") + b"\n" + key_pem)
        ctx.load_cert_chain(tmp, password=password)
    except ssl.SSLError as e:
        raise CertError(f"certificate and key do not load: {e.reason or e}") from e
    finally:
        os.unlink(tmp)
    return ctx


def _spki(public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _entry(
    chain: list[x509.Certificate],
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    ctx: ssl.SSLContext,
    source: str,
    now: dt.datetime | None,
) -> CertEntry:
    leaf = chain[0]
    leaf_key = leaf.public_key()
    if not isinstance(leaf_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey) or _spki(
        leaf_key
    ) != _spki(public_key):
        raise CertError(f"{source}: private key does not match the certificate")
    names = _names(leaf)
    if not names:
        raise CertError(f"{source}: certificate has no subjectAltName names")
    now = now or dt.datetime.now(dt.UTC)
    if not leaf.not_valid_before_utc <= now < leaf.not_valid_after_utc:
        raise CertError(
            f"{source}: certificate not valid now "
            f"({leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} .. "
            f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
        )
    return CertEntry(
        names=names,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        spki_sha256=hashlib.sha256(_spki(public_key)).digest(),
        source=source,
        context=ctx,
    )


def entry_from_key(
    chain_pem: bytes,
    key: ec.EllipticCurvePrivateKey,
    factory: ContextFactory,
    *,
    source: str,
    now: dt.datetime | None = None,
) -> CertEntry:
    """A store entry for a key held in memory (generated here, or unsealed)."""
    chain = _load_chain(chain_pem, source)
    key_pem, password = encrypted_pem(key)
    ctx = _make_context(factory, chain_pem, key_pem, password)
    return _entry(chain, key.public_key(), ctx, source, now)


def entry_from_files(
    cert_file: str,
    key_file: str,
    password: bytes | None,
    factory: ContextFactory,
    *,
    now: dt.datetime | None = None,
) -> CertEntry:
    """A store entry for operator-provided PEM files (the key may be encrypted)."""
    source = f"file:{cert_file}"
    try:
        chain_pem = Path(cert_file).read_bytes()
        key_pem = Path(key_file).read_bytes()
    except OSError as e:
        raise CertError(f"{source}: cannot read: {e.strerror} ({e.filename})") from e
    chain = _load_chain(chain_pem, source)
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError) as e:
        raise CertError(f"{key_file}: cannot load private key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertError(f"{key_file}: unsupported key type (use ECDSA P-256 or RSA)")
    # Hand OpenSSL the key re-encrypted under a fresh password, never as the operator's
    # (possibly unencrypted) PEM: the temporary file it reads must not hold a plaintext key.
    temp_pem, temp_password = encrypted_pem(key)
    ctx = _make_context(factory, chain_pem, temp_pem, temp_password)
    return _entry(chain, key.public_key(), ctx, source, now)
