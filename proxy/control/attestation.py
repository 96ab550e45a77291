"""The RA-TLS certificate's life cycle in the supervisor: prepared at start, renewed when due.

:func:`prepare_attestation` (blocking, called from
:func:`proxy.control.certificates.prepare_certificates` in a thread) makes sure a fresh
RA-TLS certificate is in ``STATE/attestation`` (:mod:`certmgr.attest.ratls_store`: renewed at
two thirds of ``attestation.cert_lifetime``, when the name, the provider or the signing
address changed, or when the collateral it carries expires). The receipt signing key's
address (the runtime's, from the unsealed key) goes into the claims as
``"signing-address"``. With ``attestation.collateral_pccs_url`` or ``collateral_file`` the
collateral of this TEE's Intel quote goes into its endorsements extension
(:func:`collateral_source`). Workers load the certificate into their CertStore under
``attestation.server_name`` (:mod:`proxy.dataplane.certstore`).

:func:`check_gpus` (part of the same step) looks at the GPUs ``[attestation] gpu`` asks
for: in ``enforce`` mode the proxy does not start unless NVML finds GPUs that give evidence
(Hopper or later) in confidential-computing mode without devtools; in ``monitor`` mode
their state is logged (a GPU in devtools or non-confidential mode with a warning).
"""

from __future__ import annotations

import asyncio
import datetime as dt

from certmgr.attest.collateral import CollateralCache
from certmgr.attest.quote import parse_evidence
from certmgr.attest.ratls_store import (
    CollateralSource,
    RaTlsMaterial,
    prepare_ratls,
    ratls_dir,
    ratls_renewal_due,
)
from certmgr.errors import QuoteProviderError
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.log import attest_log as log
from proxy.runtime import Runtime

__all__ = ["attestation_renewal", "check_gpus", "collateral_source", "prepare_attestation"]


def collateral_source(cfg: Config) -> CollateralSource | None:
    """The configured collateral of this TEE's Intel quotes, as a blocking function of the
    raw quote and the time (None: none configured). PCCS answers are cached per platform in
    ``STATE/attestation/collateral`` until their nextUpdate (:class:`CollateralCache`).

    Called in the supervisor's preparation thread, which runs no event loop: each fetch
    runs one of its own, bounded by ``attestation.collateral_timeout``.
    """
    a = cfg.attestation
    if not a.collateral_pccs_url and not a.collateral_file:
        return None
    cache = CollateralCache(
        pccs_url=a.collateral_pccs_url,
        file=a.collateral_file,
        cache_dir=str(ratls_dir(cfg.state_dir) / "collateral") if a.collateral_pccs_url else "",
    )

    def fetch(quote: bytes, now: dt.datetime) -> str:
        parsed = parse_evidence(quote)
        return asyncio.run(
            asyncio.wait_for(cache.get_text(parsed, now.timestamp()), a.collateral_timeout)
        )

    return fetch


def check_gpus(cfg: Config, runtime: Runtime) -> None:
    """Supervisor step (blocking): GPUs as ``[attestation] gpu`` requires, or ConfigError."""
    mode = cfg.attestation.gpu
    if mode == "off":
        return
    if runtime.gpus is None:
        if mode == "enforce":
            raise ConfigError("attestation.gpu", "enforce: NVML finds no GPU (no libnvidia-ml)")
        return
    try:
        state = runtime.gpus.state()
    except QuoteProviderError as e:
        if mode == "enforce":
            raise ConfigError("attestation.gpu", f"enforce: {e}") from e
        log.warning("GPU state unreadable, evidence will lack it: %s", e)
        return
    problem = ""
    if state.count == 0:
        problem = "no GPU"
    elif not state.attestable:
        problem = f"GPUs {', '.join(state.architectures)}: not all give SPDM evidence"
    elif state.mode != "cc":
        problem = f"GPUs in mode {state.mode!r}, not confidential computing without devtools"
    if problem and mode == "enforce":
        raise ConfigError("attestation.gpu", f"enforce: {problem}")
    if problem:
        log.warning("GPU attestation (monitor): %s", problem)
    else:
        log.info(
            "%d GPU(s) %s in confidential-computing mode (%s)",
            state.count,
            "/".join(sorted(set(state.architectures))),
            state.environment,
        )


def prepare_attestation(cfg: Config, runtime: Runtime, now: dt.datetime | None = None) -> None:
    """Supervisor step (blocking): a fresh RA-TLS certificate, or a clear error."""
    provider = runtime.provider
    if provider is None:
        return
    check_gpus(cfg, runtime)
    material = RaTlsMaterial(
        server_name=cfg.attestation.server_name,
        provider=provider.name,
        lifetime=dt.timedelta(seconds=cfg.attestation.cert_lifetime),
        signing_address=runtime.signing_address,
        intel_collateral=bool(
            cfg.attestation.collateral_pccs_url or cfg.attestation.collateral_file
        ),
        snp_endorsements=cfg.attestation.snp_endorsements,
    )
    try:
        prepare_ratls(
            cfg.state_dir,
            material,
            provider,
            runtime.sealer,
            now,
            collateral=collateral_source(cfg),
        )
    except QuoteProviderError as e:
        # Fail closed with the field to look at: at start this stops ``serve``; at renewal
        # the supervisor logs it and retries while the old certificate lasts.
        raise ConfigError("attestation.provider", f"{provider.name}: no quote: {e}") from e


def attestation_renewal(cfg: Config) -> dt.datetime | None:
    """When the RA-TLS certificate is due (None when attestation is off or none exists)."""
    if cfg.attestation.provider == "none":
        return None
    return ratls_renewal_due(cfg.state_dir)
