"""TEE quote providers behind one interface, and their detection.

A provider turns 64 bytes of report_data into a quote (or SEV-SNP report) from the TEE it
runs in. Providers are blocking (device files, sockets): call them off the event loop, one
at a time, through :class:`certmgr.tee.base.QuoteGate` which serializes and rate-limits.

Auto-detection order (first present wins): Linux configfs-tsm (TDX, SEV-SNP), Gramine SGX
(``/dev/attestation``), the dstack guest agent socket. ``auto`` never selects the simulated
provider: it must be named explicitly.
"""

from __future__ import annotations

from certmgr.tee.base import (
    QuoteGate,
    QuoteProvider,
    QuoteProviderError,
    QuoteRateLimited,
    detect_provider,
    make_provider,
    self_measurement,
    self_measurement_id,
)

__all__ = [
    "QuoteGate",
    "QuoteProvider",
    "QuoteProviderError",
    "QuoteRateLimited",
    "detect_provider",
    "make_provider",
    "self_measurement",
    "self_measurement_id",
]
