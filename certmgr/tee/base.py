"""The provider interface, the serializing rate-limited gate, detection and construction."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from certmgr.keys import Sealer
from certmgr.quote import Measurement, QuoteError, parse_evidence

__all__ = [
    "DEFAULT_CONFIGFS_TSM",
    "DEFAULT_DSTACK_SOCKET",
    "DEFAULT_GRAMINE_DIR",
    "REPORT_DATA_SIZE",
    "ProviderSettings",
    "QuoteGate",
    "QuoteProvider",
    "QuoteProviderError",
    "QuoteRateLimited",
    "check_report_data",
    "detect_provider",
    "make_provider",
    "self_measurement",
    "self_measurement_id",
]

log = logging.getLogger("teeproxy.attest")

DEFAULT_CONFIGFS_TSM = "/sys/kernel/config/tsm/report"
DEFAULT_GRAMINE_DIR = "/dev/attestation"
DEFAULT_DSTACK_SOCKET = "/var/run/dstack.sock"
REPORT_DATA_SIZE = 64


class QuoteProviderError(OSError):
    """The TEE did not produce a quote (device missing, busy, malformed answer)."""


class QuoteRateLimited(QuoteProviderError):
    """More quotes were asked for than the configured rate allows."""


class QuoteProvider(Protocol):
    """Produces a quote over exactly 64 bytes of report_data. Blocking; not thread-safe."""

    @property
    def name(self) -> str: ...

    def get_quote(self, report_data: bytes) -> bytes: ...


def check_report_data(report_data: bytes) -> None:
    if len(report_data) != REPORT_DATA_SIZE:
        raise QuoteProviderError(f"report_data must be {REPORT_DATA_SIZE} bytes")


@dataclass
class QuoteGate:
    """One quote at a time, at most ``rate`` per second on average with ``burst``.

    Real quote generation takes tens of milliseconds and fails with EBUSY when two run at
    once, so every caller in a process goes through one gate. A caller that would exceed the
    rate gets :class:`QuoteRateLimited` at once (it is not queued: the nonce endpoint answers
    429 instead of piling up work).
    """

    provider: QuoteProvider
    rate: float = 2.0
    burst: int = 4
    _tokens: float = field(init=False)
    _stamp: float = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _alock: asyncio.Lock | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._tokens = float(self.burst)
        self._stamp = time.monotonic()

    def _take_token(self) -> None:
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens < 1.0:
            raise QuoteRateLimited("quote rate limit reached")
        self._tokens -= 1.0

    def quote_sync(self, report_data: bytes) -> bytes:
        """Blocking: for threads (the supervisor's certificate preparation)."""
        check_report_data(report_data)
        with self._lock:
            self._take_token()
            return self.provider.get_quote(report_data)

    async def quote(self, report_data: bytes) -> bytes:
        """From the event loop: the provider runs in a thread, one call at a time."""
        check_report_data(report_data)
        if self._alock is None:
            self._alock = asyncio.Lock()
        self._take_token()
        async with self._alock:
            return await asyncio.to_thread(self._locked_call, report_data)

    def _locked_call(self, report_data: bytes) -> bytes:
        with self._lock:
            return self.provider.get_quote(report_data)


def detect_provider(
    configfs_root: str = DEFAULT_CONFIGFS_TSM,
    gramine_dir: str = DEFAULT_GRAMINE_DIR,
    dstack_socket: str = DEFAULT_DSTACK_SOCKET,
) -> str:
    """The first provider whose interface exists here, or "none"."""
    if Path(configfs_root).is_dir():
        return "configfs-tsm"
    if (Path(gramine_dir) / "quote").exists():
        return "gramine"
    if Path(dstack_socket).is_socket():
        return "dstack"
    return "none"


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where each provider's interface lives (tests point these at fakes)."""

    configfs_root: str = DEFAULT_CONFIGFS_TSM
    gramine_dir: str = DEFAULT_GRAMINE_DIR
    dstack_socket: str = DEFAULT_DSTACK_SOCKET
    timeout: float = 10.0
    simulated_key_file: str = ""
    simulated_sealer: Sealer | None = None


def make_provider(kind: str, settings: ProviderSettings | None = None) -> QuoteProvider | None:
    """Build the provider named by config ("auto" detects; "none" gives None)."""
    s = settings or ProviderSettings()
    if kind == "auto":
        kind = detect_provider(s.configfs_root, s.gramine_dir, s.dstack_socket)
        log.info("attestation provider detected: %s", kind)
    if kind == "none":
        return None
    if kind == "configfs-tsm":
        from certmgr.tee.configfs import ConfigfsTsmProvider  # noqa: PLC0415

        return ConfigfsTsmProvider(s.configfs_root, timeout=s.timeout)
    if kind == "gramine":
        from certmgr.tee.gramine import GramineProvider  # noqa: PLC0415

        return GramineProvider(s.gramine_dir)
    if kind == "dstack":
        from certmgr.tee.dstack import DstackProvider  # noqa: PLC0415

        return DstackProvider(s.dstack_socket, timeout=s.timeout)
    if kind == "simulated":
        from certmgr.tee.simulated import SimulatedProvider  # noqa: PLC0415

        if not s.simulated_key_file or s.simulated_sealer is None:
            raise QuoteProviderError("simulated provider needs a key file and a sealer")
        return SimulatedProvider.load_or_create(Path(s.simulated_key_file), s.simulated_sealer)
    raise QuoteProviderError(f"unknown attestation provider {kind!r}")


def self_measurement(provider: QuoteProvider) -> Measurement:
    """This TEE's own measurement, read from a fresh quote (for the policy's self check).

    Blocking. The report_data is a fixed label: the quote is parsed, never published.
    """
    rd = b"teeproxy self-measurement".ljust(REPORT_DATA_SIZE, b"\0")
    try:
        return parse_evidence(provider.get_quote(rd)).measurement
    except QuoteError as e:
        raise QuoteProviderError(f"{provider.name}: unparseable quote: {e}") from e


def self_measurement_id(kind: str = "auto", settings: ProviderSettings | None = None) -> bytes:
    """This TEE's measurement id (bytes32) from a fresh quote of provider ``kind``. Blocking.

    Raises :class:`QuoteProviderError` when no provider is available (fail closed).
    """
    from certmgr.quote import measurement_id  # noqa: PLC0415

    provider = make_provider(kind, settings)
    if provider is None:
        raise QuoteProviderError("no TEE attestation provider detected")
    return measurement_id(self_measurement(provider))
