"""``teeproxy verify-quote --policy-rpc ... --policy-address ...``: a real TDX quote judged by
the on-chain policy on anvil (allowed -> trusted; revoked -> rejected with the policy's reason).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import measurement_id
from tests.helpers.attest import DATA, T_TDX
from tests.helpers.chain import AnvilFactory, anvil_account0, deploy_policy, owner_tx
from tests.helpers.serve import REPO

pytestmark = pytest.mark.slow


async def verify_quote(*extra: str) -> tuple[int, dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy.cli",
        "verify-quote",
        str(DATA / "tdx_quote"),
        "--collateral",
        str(DATA / "tdx_quote_collateral.json"),
        "--at",
        str(T_TDX),
        "--json",
        *extra,
        cwd=REPO,
        env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert out.strip().startswith(b"{"), err.decode()
    return int(proc.returncode or 0), json.loads(out)


async def test_verify_quote_against_the_on_chain_policy(anvil: AnvilFactory) -> None:
    node = await anvil()
    raw = await asyncio.to_thread((DATA / "tdx_quote").read_bytes)
    quote = await asyncio.to_thread(parse_quote, raw)  # may import its parser lazily
    mid = measurement_id(quote.measurement)
    address = await deploy_policy(node.url, await anvil_account0(node.url))
    await owner_tx(node.url, address, "allow", mid, "tdx sample")
    policy = ("--policy-rpc", node.url, "--policy-address", address)
    rc, doc = await verify_quote(*policy)
    assert rc == 0, doc
    assert doc["measurement_id"] == "0x" + mid.hex()
    await owner_tx(node.url, address, "revoke", mid)
    rc, doc = await verify_quote(*policy)
    assert rc == 1
    assert "not allowed by policy version 2" in json.dumps(doc)
