"""Detecting the TEE interface present and building its quote provider.

Auto-detection order (first present wins): Linux configfs-tsm (TDX, SEV-SNP), Gramine SGX
(``/dev/attestation``), the dstack guest agent socket, the Nitro Secure Module
(``/dev/nsm``). ``auto`` never selects the simulated
provider: it must be named explicitly. Blocking (it looks at the file system).

The Nitro provider (the only one with a dependency of its own: :mod:`ctypes`, for its
ioctl) is imported when it is built, not with this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from certmgr.attest.measurement import measurement_id
from certmgr.attest.providers.base import (
    DEFAULT_CONFIGFS_TSM,
    DEFAULT_DSTACK_SOCKET,
    DEFAULT_GRAMINE_DIR,
    DEFAULT_NSM_DEVICE,
    QuoteProvider,
    self_measurement,
)
from certmgr.attest.providers.configfs import ConfigfsTsmProvider
from certmgr.attest.providers.dstack import DstackProvider
from certmgr.attest.providers.gramine import GramineProvider
from certmgr.attest.providers.simulated import SimulatedProvider
from certmgr.errors import QuoteProviderError
from certmgr.keys import Sealer
from certmgr.log import attest_log as log

__all__ = [
    "PROVIDERS",
    "ProviderSettings",
    "detect_provider",
    "make_provider",
    "self_measurement_id",
]

PROVIDERS = ("auto", "configfs-tsm", "gramine", "dstack", "nitro", "simulated", "none")


def detect_provider(
    configfs_root: str = DEFAULT_CONFIGFS_TSM,
    gramine_dir: str = DEFAULT_GRAMINE_DIR,
    dstack_socket: str = DEFAULT_DSTACK_SOCKET,
    nsm_device: str = DEFAULT_NSM_DEVICE,
) -> str:
    """The first provider whose interface exists here, or "none"."""
    if Path(configfs_root).is_dir():
        return "configfs-tsm"
    if (Path(gramine_dir) / "quote").exists():
        return "gramine"
    if Path(dstack_socket).is_socket():
        return "dstack"
    if Path(nsm_device).is_char_device():
        return "nitro"
    return "none"


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where each provider's interface lives (tests point these at fakes)."""

    configfs_root: str = DEFAULT_CONFIGFS_TSM
    gramine_dir: str = DEFAULT_GRAMINE_DIR
    dstack_socket: str = DEFAULT_DSTACK_SOCKET
    nsm_device: str = DEFAULT_NSM_DEVICE
    timeout: float = 10.0
    simulated_key_file: str = ""
    simulated_sealer: Sealer | None = None
    # The simulated TD's MRCONFIGID (48 bytes; empty: zeros), so that simulated replicas can
    # differ in measurement id (development and tests only).
    simulated_mr_config_id: bytes = b""


def make_provider(kind: str, settings: ProviderSettings | None = None) -> QuoteProvider | None:
    """Build the provider named by config ("auto" detects; "none" gives None)."""
    s = settings or ProviderSettings()
    if kind == "auto":
        kind = detect_provider(s.configfs_root, s.gramine_dir, s.dstack_socket, s.nsm_device)
        log.info("attestation provider detected: %s", kind)
    if kind == "none":
        return None
    if kind == "configfs-tsm":
        return ConfigfsTsmProvider(s.configfs_root, timeout=s.timeout)
    if kind == "gramine":
        return GramineProvider(s.gramine_dir)
    if kind == "dstack":
        return DstackProvider(s.dstack_socket, timeout=s.timeout)
    if kind == "nitro":
        from certmgr.attest.providers.nitro import NitroProvider  # noqa: PLC0415 - ctypes

        return NitroProvider(s.nsm_device)
    if kind == "simulated":
        if not s.simulated_key_file or s.simulated_sealer is None:
            raise QuoteProviderError("simulated provider needs a key file and a sealer")
        return SimulatedProvider.load_or_create(
            Path(s.simulated_key_file), s.simulated_sealer, mr_config_id=s.simulated_mr_config_id
        )
    raise QuoteProviderError(f"unknown attestation provider {kind!r}")


def self_measurement_id(kind: str = "auto", settings: ProviderSettings | None = None) -> bytes:
    """This TEE's measurement id (bytes32) from a fresh quote of provider ``kind``. Blocking.

    Raises :class:`QuoteProviderError` when no provider is available (fail closed).
    """
    provider = make_provider(kind, settings)
    if provider is None:
        raise QuoteProviderError("no TEE attestation provider detected")
    return measurement_id(self_measurement(provider))
