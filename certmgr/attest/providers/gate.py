"""One quote at a time, rate-limited: the only way a process asks its TEE for quotes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from certmgr.attest.measurement import check_report_data
from certmgr.attest.providers.base import QuoteProvider, TeeEvidence, get_evidence
from certmgr.errors import QuoteRateLimited

__all__ = ["QuoteGate"]

T = TypeVar("T")


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

    async def quote(self, report_data: bytes, *, take_token: bool = True) -> bytes:
        """From the event loop: the provider runs in a thread, one call at a time.

        ``take_token=False`` for the quote of a request that already took its token
        through :meth:`call` (one evidence answer, one token).
        """
        check_report_data(report_data)
        if self._alock is None:
            self._alock = asyncio.Lock()
        if take_token:
            self._take_token()
        async with self._alock:
            return await asyncio.to_thread(self._locked_call, report_data)

    async def call(self, fn: Callable[..., T], *args: object, take_token: bool = True) -> T:
        """Run other TEE-device work (GPU evidence through NVML) serialized with the quotes
        and under the same rate limit, in a thread."""
        if self._alock is None:
            self._alock = asyncio.Lock()
        if take_token:
            self._take_token()
        async with self._alock:
            return await asyncio.to_thread(self._locked_run, fn, *args)

    def _locked_run(self, fn: Callable[..., T], *args: object) -> T:
        with self._lock:
            return fn(*args)

    def _locked_call(self, report_data: bytes) -> bytes:
        with self._lock:
            return self.provider.get_quote(report_data)

    def evidence_sync(self, report_data: bytes) -> TeeEvidence:
        """Blocking, like :meth:`quote_sync`; the quote and its auxiliary data."""
        check_report_data(report_data)
        with self._lock:
            self._take_token()
            return get_evidence(self.provider, report_data)

    async def evidence(self, report_data: bytes, *, take_token: bool = True) -> TeeEvidence:
        """Like :meth:`quote`, with the auxiliary data (SEV-SNP: the certificate table)."""
        check_report_data(report_data)
        if self._alock is None:
            self._alock = asyncio.Lock()
        if take_token:
            self._take_token()
        async with self._alock:
            return await asyncio.to_thread(self._locked_evidence, report_data)

    def _locked_evidence(self, report_data: bytes) -> TeeEvidence:
        with self._lock:
            return get_evidence(self.provider, report_data)
