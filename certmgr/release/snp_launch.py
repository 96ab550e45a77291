"""The SEV-SNP launch measurement of a QEMU (or EC2, GCE) guest, by ``sev-snp-measure``.

Reads files: the OVMF image, and the kernel and initrd it measures for a direct boot
(``sev-snp-measure`` opens them by path). The computation is the library's (virtee
``sevsnpmeasure.guest.calc_launch_digest``: the OVMF pages, its SEV metadata sections, the
SEV hashes table of kernel, initrd and command line, one VMSA page per vCPU); this module
names its inputs, records their SHA-256 and wraps its errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sevsnpmeasure import guest as snp_guest
from sevsnpmeasure import vcpu_types, vmm_types
from sevsnpmeasure.sev_mode import SevMode

from certmgr.errors import ReleaseError
from certmgr.release.layout import sha256_file
from certmgr.release.predict import Prediction, predict_snp

__all__ = [
    "DEFAULT_GUEST_FEATURES",
    "SnpLaunch",
    "launch_digest",
    "predict_launch",
    "vcpu_types_known",
]

DEFAULT_GUEST_FEATURES = 0x1
"""SEV_FEATURES of the VMSA: SNPActive only (sev-snp-measure's and QEMU's default)."""


def vcpu_types_known() -> list[str]:
    """The vCPU model names whose CPUID signature sev-snp-measure knows (QEMU's models)."""
    return sorted(vcpu_types.CPU_SIGS)


@dataclass(frozen=True, slots=True)
class SnpLaunch:
    """What an SEV-SNP guest is launched with."""

    ovmf: Path
    vcpus: int
    vcpu_type: str
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str = ""
    guest_features: int = DEFAULT_GUEST_FEATURES
    vmm: str = "QEMU"

    def validate(self) -> None:
        if not 1 <= self.vcpus <= 512:
            raise ReleaseError("vcpus must be 1..512")
        if self.vcpu_type not in vcpu_types.CPU_SIGS:
            raise ReleaseError(f"unknown vCPU type {self.vcpu_type!r} (known: EPYC-v4, ...)")
        if self.vmm not in vmm_types.VMMType.__members__:
            raise ReleaseError(f"unknown VMM {self.vmm!r}")
        if self.initrd is not None and self.kernel is None:
            raise ReleaseError("an initrd is measured only with a kernel")

    def describe(self) -> dict[str, Any]:
        """The inputs as JSON: file hashes, not paths, so another machine can compare."""
        out: dict[str, Any] = {
            "ovmf_sha256": sha256_file(self.ovmf),
            "vcpus": self.vcpus,
            "vcpu_type": self.vcpu_type,
            "guest_features": hex(self.guest_features),
            "vmm": self.vmm,
        }
        if self.kernel is not None:
            out["kernel_sha256"] = sha256_file(self.kernel)
            out["initrd_sha256"] = sha256_file(self.initrd) if self.initrd else None
            out["cmdline"] = self.cmdline
        return out


def launch_digest(launch: SnpLaunch) -> bytes:
    """The 48-byte launch digest (the report's MEASUREMENT) of ``launch``."""
    launch.validate()
    for p in (launch.ovmf, launch.kernel, launch.initrd):
        if p is not None and not p.is_file():
            raise ReleaseError(f"{p}: no such file")
    kernel = str(launch.kernel) if launch.kernel else None
    try:
        digest = snp_guest.calc_launch_digest(
            SevMode.SEV_SNP,
            launch.vcpus,
            vcpu_types.CPU_SIGS[launch.vcpu_type],
            str(launch.ovmf),
            kernel,
            str(launch.initrd) if launch.initrd else ("/dev/null" if kernel else None),
            launch.cmdline if kernel else None,
            launch.guest_features,
            vmm_type=vmm_types.VMMType[launch.vmm],
        )
    except (RuntimeError, ValueError, OSError, AssertionError) as e:
        # sev-snp-measure raises RuntimeError for an OVMF without the metadata it needs
        # (no SEV hashes table for a direct boot), ValueError and OSError for bad files.
        raise ReleaseError(f"sev-snp-measure: {e}") from e
    if not isinstance(digest, bytes) or len(digest) != 48:
        raise ReleaseError("sev-snp-measure returned no 48-byte digest")
    return digest


def predict_launch(launch: SnpLaunch, *, host_data: bytes = bytes(32)) -> Prediction:
    """The ``sev-snp`` prediction for ``launch``."""
    digest = launch_digest(launch)
    inputs = {**launch.describe(), "launch_digest": digest.hex(), "host_data": host_data.hex()}
    return predict_snp(digest, host_data=host_data, inputs=inputs)
