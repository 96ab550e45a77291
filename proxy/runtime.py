"""What every teeproxy process builds once at start and hands down: the runtime.

Caddy's ``Provision`` habit: shared objects are made in one place, once per process, and
passed to the parts that use them, never rebuilt by each part. A :class:`Runtime` holds

- the **sealer** ``[sealing]`` selects (the key stored private keys are sealed under);
- the **quote provider** ``[attestation]`` selects (None: no TEE interface, or "none");
- this TEE's **measurement id**, read from one fresh quote (None without a provider);
- the **receipt signing key** (None when receipts are off or there is no provider; in
  cluster mode with ``[cluster] shared_signing_key``, the fleet's key: the supervisor
  starts without one and installs it once the cluster hands it over, workers load it);
- the **GPU evidence source** ``[attestation] gpu`` selects (NVML; None without GPUs).

The supervisor builds it with ``prepare=True`` (a missing signing key is generated and
sealed; any failure stops start-up with the field to look at). A worker builds it with
``prepare=False`` (it loads what the supervisor prepared; a part that fails is logged and
left out, so that attestation fails closed without taking the other certificates down).
Building is blocking (devices, sockets, files): call it in a thread.

The receipt signing stack (:mod:`certmgr.receipts.signing`: libsecp256k1, keccak, cffi) is
imported only when a key is loaded (:func:`_load_signing_key`): a worker without receipts
never has it in memory.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from certmgr.attest.measurement import measurement_id
from certmgr.attest.providers.base import QuoteProvider, self_measurement
from certmgr.attest.providers.factory import ProviderSettings, make_provider
from certmgr.attest.providers.nvml import NvmlGpuSource, load_nvml
from certmgr.attest.ratls_store import ratls_dir
from certmgr.errors import QuoteProviderError, SealingUnavailable, SigningKeyError
from certmgr.keys import InsecureDevSealer, Sealer
from certmgr.sealing import make_sealer
from proxy.config import Config
from proxy.errors import ConfigError
from proxy.log import attest_log, server_log, tls_log
from proxy.tmpdirs import private_tempdir

if TYPE_CHECKING:
    from certmgr.receipts.signing import SigningKey

__all__ = [
    "Runtime",
    "build_runtime",
    "gpus_for",
    "install_uvloop",
    "provider_for",
    "reload_signing_key",
    "sealer_for",
    "shares_signing_key",
    "with_metrics_dir",
]

_warned = False


def with_metrics_dir() -> Path:
    """Create a private directory for multiprocess metrics and point the env at it.

    Before anything imports prometheus_client (:mod:`proxy.metrics`): it picks its storage
    when first imported. Workers inherit the variable; the caller removes the directory
    (:func:`proxy.tmpdirs.remove_private_tempdir`).
    """
    path = private_tempdir("teeproxy-metrics-")  # and those of killed supervisors go
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed (it is by default)."""
    try:
        import uvloop  # noqa: PLC0415 - optional at runtime: the proxy runs without it
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def sealer_for(cfg: Config) -> Sealer:
    """The sealer ``[sealing]`` selects (blocking: a TEE provider reads a device or socket).

    With provider "insecure-development", the development sealer (warned about once).
    """
    s = cfg.sealing
    if s.provider != "insecure-development":
        try:
            sealer = make_sealer(
                s.provider,
                gramine_key_path=s.gramine_key_path,
                dstack_socket=s.dstack_socket,
                dstack_key_path=s.dstack_key_path,
                timeout=s.timeout,
            )
        except SealingUnavailable as e:  # fail closed, with the field to look at
            raise ConfigError("sealing.provider", str(e)) from e
        tls_log.info("keys are sealed with the %s sealing provider", sealer.provider)
        return sealer
    global _warned  # noqa: PLW0603 - warn once per process
    if not _warned:
        tls_log.warning(
            "keys are sealed with the INSECURE development sealing key: "
            "stored keys are effectively plaintext (development only)"
        )
        _warned = True
    return InsecureDevSealer()


def provider_for(cfg: Config, sealer: Sealer) -> QuoteProvider | None:
    """The quote provider ``[attestation]`` selects (blocking: detection touches files)."""
    a = cfg.attestation
    if a.provider == "none":
        return None
    key_file = a.simulated_key_file or str(ratls_dir(cfg.state_dir) / "dev-attestation-key.sealed")
    settings = ProviderSettings(
        configfs_root=a.configfs_tsm_dir,
        gramine_dir=a.gramine_dir,
        dstack_socket=a.dstack_socket,
        nsm_device=a.nsm_device,
        timeout=a.quote_timeout,
        simulated_key_file=key_file,
        simulated_sealer=sealer,
        simulated_mr_config_id=bytes.fromhex(a.simulated_mr_config_id),
    )
    try:
        return make_provider(a.provider, settings)
    except QuoteProviderError as e:
        raise ConfigError("attestation.provider", str(e)) from e


@dataclass(frozen=True, slots=True)
class Runtime:
    """The shared objects of one process (see the module docstring)."""

    sealer: Sealer
    provider: QuoteProvider | None = None
    measurement_id: bytes | None = None
    signing_key: SigningKey | None = None
    gpus: NvmlGpuSource | None = None

    @property
    def signing_address(self) -> str:
        """The signing key's address, ``0x`` + 40 lowercase hex, or "" without a key."""
        return self.signing_key.address_hex if self.signing_key is not None else ""


def build_runtime(cfg: Config, *, prepare: bool, sealer: Sealer | None = None) -> Runtime:
    """Build the runtime (blocking). ``prepare``: the supervisor's build (see above).

    ``sealer`` replaces the one ``[sealing]`` selects (tests seal with fakes of TEE keys).
    """
    sealer = sealer or sealer_for(cfg)
    try:
        provider = provider_for(cfg, sealer)
    except ConfigError as e:
        if prepare:
            raise
        attest_log.error("no attestation provider in this worker: %s", e)
        provider = None
    if provider is None:
        if cfg.attestation.provider == "auto" and prepare:
            attest_log.warning("no TEE interface detected: RA-TLS certificate and evidence are off")
        if cfg.receipts.enabled and prepare:
            attest_log.warning("no attestation provider: receipts are off (no signing key to bind)")
        return Runtime(sealer)
    mid = None
    try:
        # A worker needs it only to sign receipts; the supervisor for governance and logs.
        if prepare or cfg.receipts.enabled:
            mid = measurement_id(self_measurement(provider))
    except QuoteProviderError as e:
        if prepare:
            raise ConfigError("attestation.provider", f"{provider.name}: no quote: {e}") from e
        attest_log.error("no measurement id in this worker: %s", e)
    return Runtime(sealer, provider, mid, _signing_key(cfg, sealer, prepare=prepare), gpus_for(cfg))


def gpus_for(cfg: Config) -> NvmlGpuSource | None:
    """NVML when ``[attestation] gpu`` is not "off" and this machine has it (blocking: it
    loads and initialises libnvidia-ml). ``enforce`` without it is refused by the
    supervisor (:func:`proxy.control.attestation.check_gpus`)."""
    if cfg.attestation.gpu == "off":
        return None
    nvml = load_nvml()
    return NvmlGpuSource(nvml) if nvml is not None else None


def _signing_key(cfg: Config, sealer: Sealer, *, prepare: bool) -> SigningKey | None:
    """The receipt signing key, read from its sealed file (never from the public address
    file, which the host can write). A key that does not unseal stops the supervisor
    (``receipts.enabled`` names what to turn off; docs/ATTESTATION.md says how to rotate
    it instead); a worker logs it and signs nothing."""
    if not cfg.receipts.enabled:
        return None
    if shares_signing_key(cfg):
        if prepare:
            return None  # the cluster hands the fleet's key over (proxy.control.cluster)
        return reload_signing_key(cfg, sealer)
    try:
        return _load_signing_key(cfg, sealer, prepare=prepare)
    except (SigningKeyError, OSError) as e:
        if prepare:
            raise ConfigError("receipts.enabled", f"receipt signing key: {e}") from e
        server_log.error("receipts and the evidence's signing address are off: %s", e)
        return None


def shares_signing_key(cfg: Config) -> bool:
    """Cluster mode with one receipt signing key for the fleet (docs/CLUSTER.md)."""
    return cfg.cluster.enabled and cfg.cluster.shared_signing_key and cfg.receipts.enabled


def reload_signing_key(cfg: Config, sealer: Sealer) -> SigningKey | None:
    """A worker's receipt signing key as the supervisor left it (blocking): the fleet's,
    which changes when the cluster replaces it, or this replica's own. None (logged) when
    it does not load: receipts and the evidence's signing address are then off."""
    if not cfg.receipts.enabled:
        return None
    try:
        return _load_signing_key(cfg, sealer, prepare=False)
    except (SigningKeyError, OSError) as e:
        server_log.error("receipts and the evidence's signing address are off: %s", e)
        return None


def _load_signing_key(cfg: Config, sealer: Sealer, *, prepare: bool) -> SigningKey:
    """The sealed key (blocking): the supervisor prepares this replica's own (generated when
    missing), a worker loads it, or the fleet's in cluster mode with a shared signer."""
    # The one import of the signing stack: only where receipts are on and a key is loaded.
    from certmgr.receipts import signing  # noqa: PLC0415 - coincurve, keccak: only with receipts

    if shares_signing_key(cfg):
        return signing.load_shared_signing_key(cfg.state_dir, sealer)
    if prepare:
        return signing.prepare_signing_key(cfg.state_dir, sealer)
    return signing.load_signing_key(cfg.state_dir, sealer)
