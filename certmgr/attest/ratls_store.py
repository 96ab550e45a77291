"""The RA-TLS certificate in the state directory: prepared by the supervisor, loaded by workers.

Layout under ``STATE/attestation/``::

    ratls.pem           the current RA-TLS certificate (public)
    ratls.key.sealed    its ECDSA P-256 private key, sealed (certmgr.keys)
    dev-attestation-key.sealed / .pub.pem   the simulated provider's key (development only)

:func:`prepare_ratls` runs in the supervisor, off the event loop (the quote takes tens of
milliseconds and may block on the device): it generates a fresh key in this process, asks
the provider for a quote over ``SHA-256(claims) || 0^32`` and writes both atomically. It
renews when two thirds of the lifetime have passed, or when the name, the provider or the
signing address changed. The TLS handshake only ever reads the certificate workers loaded.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.providers.base import QuoteProvider
from certmgr.attest.ratls import (
    build_certificate,
    encode_claims,
    parse_certificate,
    report_data_for_claims,
)
from certmgr.devca import renewal_due
from certmgr.errors import RaTlsError
from certmgr.keys import (
    Sealer,
    atomic_write,
    generate_p256,
    load_sealed_key,
    spki_sha256,
    store_sealed_key,
)
from certmgr.log import attest_log as log

__all__ = [
    "RaTlsMaterial",
    "StoredRaTls",
    "load_ratls",
    "prepare_ratls",
    "ratls_dir",
    "ratls_renewal_due",
]


_BACKDATE = dt.timedelta(minutes=5)


def ratls_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / "attestation"


@dataclass(frozen=True, slots=True)
class RaTlsMaterial:
    """What the RA-TLS certificate must say; a change forces a new certificate."""

    server_name: str
    provider: str
    lifetime: dt.timedelta
    # The receipt signing key's address, "0x" + 40 lowercase hex (certmgr.receipts.signing), put in
    # the claims as "signing-address"; "" when receipts are off (no claim).
    signing_address: str = ""


@dataclass(frozen=True, slots=True)
class StoredRaTls:
    cert_pem: bytes
    cert: x509.Certificate


def _read_cert(d: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate((d / "ratls.pem").read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as e:
        log.warning("stored RA-TLS certificate unreadable, replacing it: %s", e)
        return None


def _matches(cert: x509.Certificate, m: RaTlsMaterial) -> bool:
    try:
        parsed = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
    except RaTlsError as e:
        log.warning("stored RA-TLS certificate malformed, replacing it: %s", e)
        return False
    claims = parsed.claims
    if claims is None:  # another format: not ours
        return False
    return bool(
        claims.get("hostname") == m.server_name
        and claims.get("provider") == m.provider
        and claims.get("signing-address", "") == m.signing_address
    )


def ratls_renewal_due(state_dir: str | Path) -> dt.datetime | None:
    """When the stored RA-TLS certificate is due (None when there is none)."""
    cert = _read_cert(ratls_dir(state_dir))
    return renewal_due(cert) if cert is not None else None


def prepare_ratls(
    state_dir: str | Path,
    material: RaTlsMaterial,
    provider: QuoteProvider,
    sealer: Sealer,
    now: dt.datetime | None = None,
) -> bool:
    """Make sure a fresh RA-TLS certificate is stored; True when a new one was made.

    Blocking (call in a thread). Raises the provider's error when no quote can be had.
    """
    now = now or dt.datetime.now(dt.UTC)
    d = ratls_dir(state_dir)
    cert = _read_cert(d)
    if (
        cert is not None
        and _matches(cert, material)
        and now < renewal_due(cert)
        and (d / "ratls.key.sealed").exists()
    ):
        return False
    key = generate_p256()
    spki_der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    not_before = now - _BACKDATE
    not_after = not_before + material.lifetime
    extra: dict[str, object] = {
        "hostname": material.server_name,
        "provider": material.provider,
        "not-before": int(not_before.timestamp()),
        "not-after": int(not_after.timestamp()),
    }
    if material.signing_address:
        extra["signing-address"] = material.signing_address
    claims = encode_claims(spki_der, extra)
    quote = provider.get_quote(report_data_for_claims(claims))
    new = build_certificate(
        key, material.server_name, quote, claims, not_before=not_before, not_after=not_after
    )
    # Key first: a crash between the two writes leaves a key without its certificate (the
    # old certificate no longer matches it and fails to load), never a certificate whose
    # key is lost.
    store_sealed_key(d / "ratls.key.sealed", key, sealer)
    atomic_write(d / "ratls.pem", new.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info(
        "RA-TLS certificate for %s issued (spki sha256 %s, provider %s, valid until %s)",
        material.server_name,
        spki_sha256(key.public_key()).hex()[:16],
        material.provider,
        not_after.isoformat(),
    )
    return True


def load_ratls(
    state_dir: str | Path, sealer: Sealer
) -> tuple[bytes, ec.EllipticCurvePrivateKey] | None:
    """(certificate PEM, private key) of the stored RA-TLS certificate, or None."""
    d = ratls_dir(state_dir)
    try:
        pem = (d / "ratls.pem").read_bytes()
    except FileNotFoundError:
        return None
    key = load_sealed_key(d / "ratls.key.sealed", sealer)
    return pem, key
