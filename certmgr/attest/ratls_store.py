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

Endorsements (:mod:`certmgr.attest.endorsements`, extension ``2.23.133.5.4.2``), so that a
client verifies offline: for an SEV-SNP report the certificate table the TEE handed out
with it (configfs-tsm ``auxblob``); for an Intel quote the collateral a ``collateral``
source gives for it (a file or a PCCS, :class:`certmgr.attest.collateral.CollateralCache`).
Without either the certificate carries no endorsements (logged once). A certificate with
Intel collateral is also renewed when the collateral's earliest nextUpdate passes, since a
verifier refuses it from then on; collateral already past it is not embedded.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.attest.cmw import CMW_OID, TsmReport
from certmgr.attest.cmw import decode_extension as decode_cmw
from certmgr.attest.cmw import encode_extension as encode_cmw
from certmgr.attest.endorsements import (
    ENDORSEMENTS_OID,
    IntelCollateral,
    compact_cert_table,
    decode_endorsements,
    encode_intel_endorsements,
)
from certmgr.attest.providers.base import QuoteProvider, TeeEvidence, get_evidence
from certmgr.attest.quote import is_snp_report, parse_evidence
from certmgr.attest.ratls import (
    RaTlsCert,
    build_certificate,
    encode_claims,
    parse_certificate,
    report_data_for_claims,
)
from certmgr.devca import renewal_due
from certmgr.errors import CertmgrError, QuoteError, RaTlsError
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
    "CollateralSource",
    "RaTlsMaterial",
    "StoredRaTls",
    "load_ratls",
    "prepare_ratls",
    "ratls_dir",
    "ratls_due",
    "ratls_renewal_due",
]


_BACKDATE = dt.timedelta(minutes=5)

CollateralSource = Callable[[bytes, dt.datetime], str]
"""Blocking: dcap-qvl collateral JSON for this raw Intel quote, current at this time
(raises a CertmgrError or an OSError when there is none to be had)."""

_logged: set[str] = set()


def _once(key: str, message: str, *args: object) -> None:
    """Log ``message`` once per process for ``key`` (a missing source is not news twice)."""
    if key not in _logged:
        _logged.add(key)
        log.info(message, *args)


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
    # Whether a collateral source for Intel quotes is configured: a certificate for an
    # Intel quote without endorsements is then replaced when prepared again (and one with
    # them when none is configured any more).
    intel_collateral: bool = False
    # Whether an SEV-SNP report's certificate table goes into the certificate (in the TSM
    # report of its id-pe-cmw extension, RFC 9999).
    snp_endorsements: bool = True


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
    if _wants_intel_collateral(parsed.quote) and m.intel_collateral != _has_endorsements(parsed):
        return False
    if is_snp_report(parsed.quote) and m.snp_endorsements != _has_cert_table(parsed):
        return False
    return bool(
        claims.get("hostname") == m.server_name
        and claims.get("provider") == m.provider
        and claims.get("signing-address", "") == m.signing_address
    )


def _wants_intel_collateral(quote: bytes) -> bool:
    """An Intel quote from a real TEE (a simulated one has no collateral)."""
    if is_snp_report(quote):
        return False
    try:
        return not parse_evidence(quote).simulated
    except QuoteError:
        return False


def _has_endorsements(cert: RaTlsCert) -> bool:
    return ENDORSEMENTS_OID in cert.extensions


def _has_cert_table(cert: RaTlsCert) -> bool:
    """Whether the certificate's CMW carries an SEV-SNP certificate table."""
    found = cert.extensions.get(CMW_OID)
    try:
        return found is not None and bool(decode_cmw(found[1]).auxblob)
    except RaTlsError:
        return False


@functools.lru_cache(maxsize=8)
def _collateral_next_update(der: bytes) -> dt.datetime | None:
    """The earliest nextUpdate of the Intel collateral a certificate carries (None: none,
    or unreadable, or already past when the certificate was issued)."""
    try:
        found = parse_certificate(der).extensions.get(ENDORSEMENTS_OID)
        if found is None:
            return None
        intel = decode_endorsements(found[1]).intel
        due = intel.next_update()
        issued = x509.load_der_x509_certificate(der).not_valid_before_utc
    except (CertmgrError, ValueError) as e:
        log.warning("stored RA-TLS certificate's endorsements unreadable: %s", e)
        return None
    return due if due > issued else None


def ratls_due(cert: x509.Certificate) -> dt.datetime:
    """When this RA-TLS certificate is due: at two thirds of its life, or when the Intel
    collateral it carries stops being valid, whichever comes first."""
    due = renewal_due(cert)
    collateral = _collateral_next_update(cert.public_bytes(serialization.Encoding.DER))
    return min(due, collateral) if collateral is not None else due


def ratls_renewal_due(state_dir: str | Path) -> dt.datetime | None:
    """When the stored RA-TLS certificate is due (None when there is none)."""
    cert = _read_cert(ratls_dir(state_dir))
    return ratls_due(cert) if cert is not None else None


def prepare_ratls(
    state_dir: str | Path,
    material: RaTlsMaterial,
    provider: QuoteProvider,
    sealer: Sealer,
    now: dt.datetime | None = None,
    *,
    collateral: CollateralSource | None = None,
) -> bool:
    """Make sure a fresh RA-TLS certificate is stored; True when a new one was made.

    Blocking (call in a thread). Raises the provider's error when no quote can be had.
    ``collateral`` gives the collateral of an Intel quote to embed (module docstring).
    """
    now = now or dt.datetime.now(dt.UTC)
    d = ratls_dir(state_dir)
    cert = _read_cert(d)
    if (
        cert is not None
        and _matches(cert, material)
        and now < ratls_due(cert)
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
    evidence = get_evidence(provider, report_data_for_claims(claims))
    quote = evidence.quote
    endorsements = _endorsements(evidence, collateral, now)
    cmw = _cmw(evidence, with_table=material.snp_endorsements)
    new = build_certificate(
        key,
        material.server_name,
        quote,
        claims,
        not_before=not_before,
        not_after=not_after,
        endorsements=endorsements,
        cmw=cmw,
    )
    # Key first: a crash between the two writes leaves a key without its certificate (the
    # old certificate no longer matches it and fails to load), never a certificate whose
    # key is lost.
    store_sealed_key(d / "ratls.key.sealed", key, sealer)
    atomic_write(d / "ratls.pem", new.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.info(
        "RA-TLS certificate for %s issued (spki sha256 %s, provider %s, valid until %s, "
        "endorsements %s)",
        material.server_name,
        spki_sha256(key.public_key()).hex()[:16],
        material.provider,
        not_after.isoformat(),
        f"{len(endorsements)} bytes" if endorsements is not None else "none",
    )
    return True


def _cmw(evidence: TeeEvidence, *, with_table: bool) -> bytes | None:
    """For an SEV-SNP report, the id-pe-cmw extension (RFC 9999, :mod:`certmgr.attest.cmw`):
    the TSM report with the certificate table configfs-tsm gave (unless configured off)."""
    if not is_snp_report(evidence.quote):
        return None
    table = b""
    if not with_table:
        _once("snp-off", "SEV-SNP: certificate table not put in the certificate (config)")
    elif not evidence.auxblob:
        _once("snp-none", "SEV-SNP: no certificate table from the TEE: none in the certificate")
    else:
        try:
            table = compact_cert_table(evidence.auxblob)
        except CertmgrError as e:
            log.warning("SEV-SNP certificate table unusable, not in the certificate: %s", e)
    return encode_cmw(TsmReport("sev_guest", evidence.quote, table))


def _endorsements(
    evidence: TeeEvidence, collateral: CollateralSource | None, now: dt.datetime
) -> bytes | None:
    """The endorsements value for this evidence, or None (logged) when there is none."""
    if is_snp_report(evidence.quote):
        return None  # SEV-SNP: the certificate table travels in the CMW (:func:`_cmw`)
    if not _wants_intel_collateral(evidence.quote):
        return None
    if collateral is None:
        _once(
            "intel-none",
            "no collateral source configured (attestation.collateral_pccs_url or "
            "collateral_file): the RA-TLS certificate carries no endorsements",
        )
        return None
    try:
        intel = IntelCollateral.from_json(collateral(evidence.quote, now))
        due = intel.next_update()
        if due <= now:
            log.warning("collateral for this quote expired at %s: not embedded", due.isoformat())
            return None
        return encode_intel_endorsements(intel)
    except (CertmgrError, OSError, ValueError, RuntimeError) as e:
        # OSError includes a fetch timeout; ValueError/RuntimeError what dcap-qvl's fetch
        # raises. None of it stops the certificate: it is issued without endorsements.
        log.warning("no collateral for this quote, no endorsements: %s", e)
        return None


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
