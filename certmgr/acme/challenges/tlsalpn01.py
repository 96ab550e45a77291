"""TLS-ALPN-01 (RFC 8737): the challenge certificate, its publication and loading.

RFC 8737 section 3: the server presents, to a ClientHello with SNI = the identifier and ALPN
``acme-tls/1`` only, a self-signed certificate whose subjectAltName holds exactly that one
dNSName and which carries the *critical* extension id-pe-acmeIdentifier
(1.3.6.1.5.5.7.1.31) whose value is the DER OCTET STRING of SHA-256(key authorization).
The acme library dropped its TLS-ALPN-01 classes in 5.0, so the certificate is built here.

Publication (supervisor) writes ``NAME.pem`` (public) and ``NAME.key.sealed`` under
``STATE/acme/challenges/tls-alpn-01/``; workers read them when they build their store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certmgr.acme.challenges import challenge_dir
from certmgr.keys import Sealer, atomic_write, load_sealed_key, store_sealed_key
from certmgr.log import acme_log as log

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ALPN_ACME_TLS",
    "ChallengeCert",
    "acme_identifier_digest",
    "challenge_certificate",
    "load_published",
    "offers_alpn",
    "publish",
    "remove",
]


ALPN_ACME_TLS = "acme-tls/1"
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# A challenge certificate lives only for the seconds of one validation.
_LIFETIME = dt.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ChallengeCert:
    name: str
    cert_pem: bytes
    key: ec.EllipticCurvePrivateKey


def challenge_certificate(
    name: str, key_authorization: str, key: ec.EllipticCurvePrivateKey, now: dt.datetime
) -> x509.Certificate:
    """The RFC 8737 section 3 certificate for ``name`` (pure apart from the signature)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # extnValue holds the DER encoding of "Authorization ::= OCTET STRING (SIZE (32))".
    ext_value = b"\x04\x20" + digest
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, ext_value), critical=True)
        .sign(key, hashes.SHA256())
    )


def acme_identifier_digest(cert: x509.Certificate) -> bytes | None:
    """The 32-byte digest from a certificate's critical acmeIdentifier extension, or None."""
    try:
        ext = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not ext.critical or not isinstance(value, x509.UnrecognizedExtension):
        return None
    raw = value.value
    if len(raw) != 34 or raw[:2] != b"\x04\x20":
        return None
    return raw[2:]


_MAX_HELLO = 64 * 1024


def offers_alpn(hello: bytes, protocol: bytes = ALPN_ACME_TLS.encode()) -> bool:
    """Whether a ClientHello handshake message offers ALPN ``protocol`` (RFC 8446 4.1.2, RFC 7301).

    ``hello`` is the whole handshake message (type byte, 3-byte length, body), as OpenSSL's
    message callback delivers it. Pure and bounded: any malformation gives False.
    """
    if len(hello) > _MAX_HELLO or len(hello) < 4 or hello[0] != 1:
        return False
    end = 4 + int.from_bytes(hello[1:4], "big")
    if end > len(hello):
        return False
    pos = 4 + 2 + 32  # legacy_version, random

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > end:
            raise IndexError
        v = int.from_bytes(hello[pos : pos + n], "big")
        pos += n
        return v

    try:
        # (``pos += take(n)`` would read pos before take() advanced it: keep two steps.)
        skip = take(1)  # legacy_session_id
        pos += skip
        skip = take(2)  # cipher_suites
        pos += skip
        skip = take(1)  # legacy_compression_methods
        pos += skip
        if pos == end:
            return False  # no extensions
        ext_len = take(2)
        ext_end = pos + ext_len
        if ext_end > end:
            return False
        while pos + 4 <= ext_end:
            ext_type = take(2)
            ext_len = take(2)
            if pos + ext_len > ext_end:
                return False
            if ext_type == 16:  # application_layer_protocol_negotiation
                body = hello[pos : pos + ext_len]
                if len(body) < 2 or int.from_bytes(body[:2], "big") != len(body) - 2:
                    return False
                i = 2
                while i < len(body):
                    n = body[i]
                    name = body[i + 1 : i + 1 + n]
                    if n == 0 or len(name) != n:
                        return False
                    if name == protocol:
                        return True
                    i += 1 + n
                return False
            pos += ext_len
    except IndexError:
        return False
    return False


def _paths(state_dir: str | Path, name: str) -> tuple[Path, Path]:
    d = challenge_dir(state_dir, "tls-alpn-01")
    return d / f"{name}.pem", d / f"{name}.key.sealed"


def publish(
    state_dir: str | Path,
    name: str,
    key_authorization: str,
    sealer: Sealer,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: dt.datetime | None = None,
) -> None:
    """Write the challenge certificate (public) and its key (sealed) for ``name``."""
    now = now or dt.datetime.now(dt.UTC)
    cert = challenge_certificate(name, key_authorization, key, now)
    pem_path, key_path = _paths(state_dir, name)
    store_sealed_key(key_path, key, sealer)
    atomic_write(pem_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info("tls-alpn-01 challenge certificate published for %s", name)


def remove(state_dir: str | Path, name: str) -> None:
    for p in _paths(state_dir, name):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def load_published(state_dir: str | Path, sealer: Sealer) -> list[ChallengeCert]:
    """Every published challenge certificate (blocking). Broken entries are logged, skipped."""
    d = challenge_dir(state_dir, "tls-alpn-01")
    if not d.is_dir():
        return []
    out: list[ChallengeCert] = []
    for pem_path in sorted(d.glob("*.pem")):
        name = pem_path.name[: -len(".pem")]
        key_path = d / f"{name}.key.sealed"
        try:
            pem = pem_path.read_bytes()
            key = load_sealed_key(key_path, sealer)
        except (OSError, ValueError) as e:
            log.warning("tls-alpn-01 challenge for %s not loaded: %s", name, e)
            continue
        out.append(ChallengeCert(name, pem, key))
    return out
