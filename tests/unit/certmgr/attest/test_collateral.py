"""certmgr.attest.collateral: the collateral cache, in memory and on disk, until the
collateral's next update."""

from __future__ import annotations

from pathlib import Path

import pytest

from certmgr.attest.collateral import CollateralCache, collateral_next_update
from certmgr.attest.intel import parse_quote
from certmgr.errors import VerifyError
from tests.helpers.attest import collateral_text, vector

_TDX_COLLATERAL = collateral_text("tdx_quote")


_TDX_PARSED = parse_quote(vector("tdx_quote"))


async def test_collateral_cache_until_next_update(tmp_path: Path) -> None:
    text = _TDX_COLLATERAL
    calls: list[str] = []

    async def fetch(url: str, raw: bytes) -> str:
        calls.append(url)
        return text

    q = _TDX_PARSED
    until = collateral_next_update(text)
    cache = CollateralCache(pccs_url="https://pccs.test", cache_dir=str(tmp_path), fetch=fetch)
    await cache.get(q, now=until - 100)
    await cache.get(q, now=until - 50)
    assert calls == ["https://pccs.test"]
    fresh = CollateralCache(pccs_url="https://pccs.test", cache_dir=str(tmp_path), fetch=fetch)
    await fresh.get(q, now=until - 10)  # served from the disk cache
    assert len(calls) == 1
    await cache.get(q, now=until + 1)
    assert len(calls) == 2
    with pytest.raises(VerifyError):
        await CollateralCache().get(q)
