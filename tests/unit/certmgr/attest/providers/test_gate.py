"""certmgr.attest.providers.gate: quote requests serialized (a provider answers EBUSY
to concurrent ones) and rate limited."""

from __future__ import annotations

import asyncio
import time

from certmgr.attest.providers.base import TeeEvidence
from certmgr.attest.providers.gate import QuoteGate
from certmgr.attest.simulated import build_simulated_quote
from certmgr.errors import QuoteProviderError, QuoteRateLimited
from tests.helpers.attest import DEV_KEY


class _BusyProvider:
    """Fails with EBUSY when called concurrently, like real quote generation."""

    def __init__(self) -> None:
        self.active = 0
        self.calls = 0

    @property
    def name(self) -> str:
        return "busy"

    def get_quote(self, report_data: bytes) -> bytes:
        self.active += 1
        try:
            if self.active > 1:
                raise QuoteProviderError("EBUSY")
            self.calls += 1
            time.sleep(0.01)
            return build_simulated_quote(DEV_KEY, report_data)
        finally:
            self.active -= 1


async def test_gate_serializes_and_rate_limits() -> None:
    busy = _BusyProvider()
    gate = QuoteGate(busy, rate=0.001, burst=5)
    results = await asyncio.gather(
        *(gate.quote(bytes([i]) * 64) for i in range(7)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, bytes)]
    limited = [r for r in results if isinstance(r, QuoteRateLimited)]
    assert len(ok) == 5 and len(limited) == 2
    assert busy.calls == 5
    # Mixed with a thread (the supervisor path) it is still one at a time.
    gate2 = QuoteGate(busy, rate=1000, burst=10)
    await asyncio.gather(
        asyncio.to_thread(gate2.quote_sync, bytes(64)),
        gate2.quote(bytes(64)),
        gate2.quote(bytes(64)),
    )
    assert busy.calls == 8


class _AuxProvider(_BusyProvider):
    """Hands out auxiliary data with each quote (as configfs-tsm does on SEV-SNP)."""

    def get_evidence(self, report_data: bytes) -> TeeEvidence:
        return TeeEvidence(self.get_quote(report_data), b"aux:" + report_data[:1])


async def test_evidence_is_serialized_and_rate_limited_too() -> None:
    aux = _AuxProvider()
    gate = QuoteGate(aux, rate=0.001, burst=3)
    results = await asyncio.gather(
        *(gate.evidence(bytes([i]) * 64) for i in range(4)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, TeeEvidence)]
    assert sorted(r.auxblob for r in ok) == [b"aux:\x00", b"aux:\x01", b"aux:\x02"]
    assert sum(isinstance(r, QuoteRateLimited) for r in results) == 1
    assert aux.calls == 3
    # A provider without auxiliary data gives the quote alone.
    plain = await QuoteGate(_BusyProvider()).evidence(b"\x07" * 64)
    assert plain.auxblob == b"" and len(plain.quote) > 64
