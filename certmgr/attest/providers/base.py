"""The quote provider interface: 64 bytes of report_data in, the TEE's signed evidence out.

A provider (one module per TEE interface in this package) is blocking (device files,
sockets) and not thread-safe: call it off the event loop, one call at a time, through
:class:`certmgr.attest.providers.gate.QuoteGate`, which serializes and rate-limits.
:mod:`certmgr.attest.providers.factory` detects and builds the configured one.
"""

from __future__ import annotations

from typing import Protocol

from certmgr.attest.measurement import Measurement
from certmgr.attest.quote import parse_evidence
from certmgr.errors import QuoteError, QuoteProviderError

__all__ = [
    "DEFAULT_CONFIGFS_TSM",
    "DEFAULT_DSTACK_SOCKET",
    "DEFAULT_GRAMINE_DIR",
    "QuoteProvider",
    "self_measurement",
]

DEFAULT_CONFIGFS_TSM = "/sys/kernel/config/tsm/report"
DEFAULT_GRAMINE_DIR = "/dev/attestation"
DEFAULT_DSTACK_SOCKET = "/var/run/dstack.sock"


class QuoteProvider(Protocol):
    """Produces a quote over exactly 64 bytes of report_data. Blocking; not thread-safe."""

    @property
    def name(self) -> str: ...

    def get_quote(self, report_data: bytes) -> bytes: ...


def self_measurement(provider: QuoteProvider) -> Measurement:
    """This TEE's own measurement, read from a fresh quote (for the policy's self check).

    Blocking. The report_data is a fixed label: the quote is parsed, never published.
    """
    rd = b"teeproxy self-measurement".ljust(64, b"\0")
    try:
        return parse_evidence(provider.get_quote(rd)).measurement
    except QuoteError as e:
        raise QuoteProviderError(f"{provider.name}: unparseable quote: {e}") from e
