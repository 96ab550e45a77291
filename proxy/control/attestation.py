"""The RA-TLS certificate's life cycle in the supervisor: prepared at start, renewed when due.

:func:`prepare_attestation` (blocking, called from
:func:`proxy.control.certificates.prepare_certificates` in a thread) makes sure a fresh
RA-TLS certificate is in ``STATE/attestation`` (:mod:`certmgr.attest.ratls_store`: renewed at
two thirds of ``attestation.cert_lifetime``, or when the name, the provider or the signing
address changed). The receipt signing key's address (the runtime's, from the unsealed key)
goes into the claims as ``"signing-address"``. Workers load the certificate into their
CertStore under ``attestation.server_name`` (:mod:`proxy.dataplane.certstore`).
"""

from __future__ import annotations

import datetime as dt

from certmgr.attest.ratls_store import RaTlsMaterial, prepare_ratls, ratls_renewal_due
from certmgr.errors import QuoteProviderError
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.runtime import Runtime

__all__ = ["attestation_renewal", "prepare_attestation"]


def prepare_attestation(cfg: Config, runtime: Runtime, now: dt.datetime | None = None) -> None:
    """Supervisor step (blocking): a fresh RA-TLS certificate, or a clear error."""
    provider = runtime.provider
    if provider is None:
        return
    material = RaTlsMaterial(
        server_name=cfg.attestation.server_name,
        provider=provider.name,
        lifetime=dt.timedelta(seconds=cfg.attestation.cert_lifetime),
        signing_address=runtime.signing_address,
    )
    try:
        prepare_ratls(cfg.state_dir, material, provider, runtime.sealer, now)
    except QuoteProviderError as e:
        # Fail closed with the field to look at: at start this stops ``serve``; at renewal
        # the supervisor logs it and retries while the old certificate lasts.
        raise ConfigError("attestation.provider", f"{provider.name}: no quote: {e}") from e


def attestation_renewal(cfg: Config) -> dt.datetime | None:
    """When the RA-TLS certificate is due (None when attestation is off or none exists)."""
    if cfg.attestation.provider == "none":
        return None
    return ratls_renewal_due(cfg.state_dir)
