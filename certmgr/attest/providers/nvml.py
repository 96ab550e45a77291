"""NVIDIA GPU evidence through NVML (blocking; one call at a time, through the quote gate).

NVIDIA's own Python bindings (``nvidia-ml-py``, module ``pynvml``) over the guest driver's
``libnvidia-ml.so``; the calls (NVML API reference, "Confidential Computing"):

- ``nvmlSystemGetConfComputeState()`` -> ``c_nvmlConfComputeSystemState_t``:
  ``environment`` (``NVML_CC_SYSTEM_ENVIRONMENT_{UNAVAILABLE,SIM,PROD}`` = 0, 1, 2),
  ``ccFeature`` (``NVML_CC_SYSTEM_FEATURE_{DISABLED,ENABLED}`` = 0, 1) and ``devToolsMode``
  (``NVML_CC_SYSTEM_DEVTOOLS_MODE_{OFF,ON}`` = 0, 1): system-wide;
- ``nvmlDeviceGetConfComputeGpuAttestationReport(handle, nonce)`` with a caller-chosen
  32-byte nonce -> ``c_nvmlConfComputeGpuAttestationReport_t``: ``attestationReportSize``
  bytes of ``attestationReport`` (0x2000), the SPDM GET_MEASUREMENTS request || response;
- ``nvmlDeviceGetConfComputeGpuCertificate(handle)`` -> ``c_nvmlConfComputeGpuCertificate_t``:
  ``attestationCertChainSize`` bytes of ``attestationCertChain`` (0x1400), the PEM chain;
- ``nvmlDeviceGetArchitecture`` (``NVML_DEVICE_ARCH_HOPPER`` 9, ``_BLACKWELL`` 10),
  ``nvmlSystemGetDriverVersion``, ``nvmlDeviceGetVbiosVersion``.

:meth:`NvmlGpuSource.state` says whether the GPUs are in confidential-computing mode
(``"cc"``), in CC mode with developer tools on (``"devtools"``: the host's tools can read
GPU state, so never trusted), or not confidential (``"off"``), and which GPUs there are;
:meth:`NvmlGpuSource.collect` returns each GPU's evidence over one nonce. NVSwitch
evidence is not read here (it needs NVIDIA's NSCQ library, not NVML). Tests pass a fake of
the ``pynvml`` module with the same names.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from certmgr.attest.nvidia import (
    MAX_CHAIN_SIZE,
    MAX_REPORT_SIZE,
    NONCE_SIZE,
    DeviceEvidence,
    GpuArch,
)
from certmgr.errors import QuoteProviderError
from certmgr.log import attest_log as log

__all__ = ["GpuState", "NvmlGpuSource", "load_nvml"]

_ARCH = {9: GpuArch.HOPPER, 10: GpuArch.BLACKWELL}
_ENVIRONMENT = {0: "unavailable", 1: "simulated", 2: "production"}
MAX_GPUS = 16


def load_nvml() -> ModuleType | None:
    """NVIDIA's ``pynvml``, initialised; None when there is no NVML library here."""
    try:
        import pynvml  # noqa: PLC0415 - loads libnvidia-ml.so: only where GPUs are wanted
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        log.info("no NVML here (%s): no GPU evidence", e)
        return None
    module: ModuleType = pynvml
    return module


@dataclass(frozen=True, slots=True)
class GpuState:
    mode: str  # "cc", "devtools" or "off"
    environment: str
    architectures: tuple[str, ...]  # one per GPU, NVML's order ("HOPPER", ..., or "OTHER-<n>")

    @property
    def count(self) -> int:
        return len(self.architectures)

    @property
    def attestable(self) -> bool:
        """Every GPU is one whose evidence NVML gives (Hopper or later)."""
        return all(a in _ARCH.values() for a in self.architectures)


class NvmlGpuSource:
    """GPU state and evidence from NVML (blocking, not thread-safe: use one at a time)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._lock = threading.Lock()

    def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self.nvml.NVMLError as e:
            raise QuoteProviderError(f"nvml: {what}: {e}") from e

    def state(self) -> GpuState:
        with self._lock:
            n = self._nvml_count()
            archs = []
            for i in range(n):
                h = self._call("handle", self.nvml.nvmlDeviceGetHandleByIndex, i)
                code = self._call("architecture", self.nvml.nvmlDeviceGetArchitecture, h)
                archs.append(str(_ARCH.get(code, f"OTHER-{code}")))
            cc = self._call("confidential-computing state", self.nvml.nvmlSystemGetConfComputeState)
            if not cc.ccFeature:
                mode = "off"
            elif cc.devToolsMode:
                mode = "devtools"
            else:
                mode = "cc"
            return GpuState(mode, _ENVIRONMENT.get(cc.environment, "unknown"), tuple(archs))

    def _nvml_count(self) -> int:
        n = self._call("device count", self.nvml.nvmlDeviceGetCount)
        if not isinstance(n, int) or not 0 <= n <= MAX_GPUS:
            raise QuoteProviderError(f"nvml: {n!r} GPUs")
        return n

    def collect(self, nonce: bytes) -> tuple[DeviceEvidence, ...]:
        """Each GPU's SPDM report over ``nonce`` (32 bytes) and its attestation chain."""
        if len(nonce) != NONCE_SIZE:
            raise QuoteProviderError(f"nvml: the nonce must be {NONCE_SIZE} bytes")
        with self._lock:
            driver = self._call("driver version", self.nvml.nvmlSystemGetDriverVersion)
            out = []
            for i in range(self._nvml_count()):
                h = self._call("handle", self.nvml.nvmlDeviceGetHandleByIndex, i)
                code = self._call("architecture", self.nvml.nvmlDeviceGetArchitecture, h)
                arch = _ARCH.get(code)
                if arch is None:
                    raise QuoteProviderError(
                        f"nvml: GPU {i} (architecture {code}) gives no evidence"
                    )
                report = self._call(
                    "attestation report",
                    self.nvml.nvmlDeviceGetConfComputeGpuAttestationReport,
                    h,
                    nonce,
                )
                cert = self._call(
                    "certificate", self.nvml.nvmlDeviceGetConfComputeGpuCertificate, h
                )
                vbios = self._call("VBIOS version", self.nvml.nvmlDeviceGetVbiosVersion, h)
                raw = _bytes(
                    report.attestationReport, report.attestationReportSize, MAX_REPORT_SIZE
                )
                chain = _bytes(
                    cert.attestationCertChain, cert.attestationCertChainSize, MAX_CHAIN_SIZE
                )
                out.append(
                    DeviceEvidence(
                        arch,
                        raw,
                        chain,
                        nonce,
                        {"driver_version": _text(driver), "vbios_version": _text(vbios)},
                    )
                )
            return tuple(out)


def _bytes(buffer: Any, size: Any, cap: int) -> bytes:
    if not isinstance(size, int) or not 0 < size <= cap:
        raise QuoteProviderError(f"nvml: answer of {size!r} bytes (at most {cap})")
    return bytes(buffer[:size])


def _text(value: Any) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text[:64]
