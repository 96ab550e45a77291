"""proxy.control.acme: a build the policy does not allow orders no certificate (enforce mode)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from certmgr.keys import InsecureDevSealer
from proxy.config import loads
from proxy.control.acme import AcmeManager


class RecordingIssuer:
    def __init__(self) -> None:
        self.orders = 0

    def obtain(self, _clock: Any) -> None:
        self.orders += 1


async def _nothing() -> None:
    return None


@pytest.mark.parametrize(("allowed", "orders"), [(False, 0), (True, 1)])
async def test_governance_gates_acme_orders(tmp_path: Path, allowed: bool, orders: int) -> None:
    cfg = await asyncio.to_thread(
        loads,
        f'state_dir = "{tmp_path}"\n[acme]\nenabled = true\nnames = ["a.example.test"]\n'
        'directory_urls = ["https://127.0.0.1:14000/dir"]\ncaa_check = false\n',
    )
    now = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)
    manager = AcmeManager(
        cfg, InsecureDevSealer(), _nothing, clock=lambda: now, may_order=lambda: allowed
    )
    issuer = RecordingIssuer()
    manager._issuer = issuer  # type: ignore[assignment]
    wake = await manager.step()  # no certificate stored: an order is due
    assert issuer.orders == orders
    if not allowed:
        assert now < wake <= now + dt.timedelta(seconds=60)
