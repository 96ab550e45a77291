"""The quote provider interface: 64 bytes of report_data in, the TEE's signed evidence out.

A provider (one module per TEE interface in this package) is blocking (device files,
sockets) and not thread-safe: call it off the event loop, one call at a time, through
:class:`certmgr.attest.providers.gate.QuoteGate`, which serializes and rate-limits.
:mod:`certmgr.attest.providers.factory` detects and builds the configured one.

A provider whose TEE hands out more than the quote (configfs-tsm's ``auxblob``: on an
SEV-SNP guest, the extended report's certificate table) also has ``get_evidence``; callers
use :func:`get_evidence`, which works with either kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from certmgr.attest.measurement import Measurement
from certmgr.attest.quote import parse_evidence
from certmgr.errors import QuoteError, QuoteProviderError

__all__ = [
    "DEFAULT_CONFIGFS_TSM",
    "DEFAULT_DSTACK_SOCKET",
    "DEFAULT_GRAMINE_DIR",
    "DEFAULT_NSM_DEVICE",
    "EvidenceProvider",
    "QuoteProvider",
    "TeeEvidence",
    "get_evidence",
    "self_measurement",
]

DEFAULT_CONFIGFS_TSM = "/sys/kernel/config/tsm/report"
DEFAULT_GRAMINE_DIR = "/dev/attestation"
DEFAULT_DSTACK_SOCKET = "/var/run/dstack.sock"
DEFAULT_NSM_DEVICE = "/dev/nsm"


class QuoteProvider(Protocol):
    """Produces a quote over exactly 64 bytes of report_data. Blocking; not thread-safe."""

    @property
    def name(self) -> str: ...

    def get_quote(self, report_data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class TeeEvidence:
    """One quote and what the TEE handed out with it in the same request."""

    quote: bytes
    # configfs-tsm ``auxblob`` as read (bounded): for ``sev_guest`` the GHCB certificate
    # table (VCEK/VLEK, ASK/ASVK, ARK) of the extended report; b"" when there is none.
    auxblob: bytes = b""


@runtime_checkable
class EvidenceProvider(Protocol):
    """A provider that returns a quote together with its auxiliary data."""

    @property
    def name(self) -> str: ...

    def get_quote(self, report_data: bytes) -> bytes: ...

    def get_evidence(self, report_data: bytes) -> TeeEvidence: ...


def get_evidence(provider: QuoteProvider, report_data: bytes) -> TeeEvidence:
    """The quote over ``report_data`` and, when the provider has it, its auxiliary data.
    Blocking; one TEE request."""
    if isinstance(provider, EvidenceProvider):
        return provider.get_evidence(report_data)
    return TeeEvidence(provider.get_quote(report_data))


def self_measurement(provider: QuoteProvider) -> Measurement:
    """This TEE's own measurement, read from a fresh quote (for the policy's self check).

    Blocking. The report_data is a fixed label: the quote is parsed, never published.
    """
    rd = b"teeproxy self-measurement".ljust(64, b"\0")
    try:
        return parse_evidence(provider.get_quote(rd)).measurement
    except QuoteError as e:
        raise QuoteProviderError(f"{provider.name}: unparseable quote: {e}") from e
