"""The policy reader against anvil: k-of-n quorum, a lying endpoint, outages and staleness.

Endpoints: anvil itself, an honest JSON-RPC relay in front of it and a lying relay (it rewrites
every ``eth_call`` result into a forged policy), all real HTTP JSON-RPC on loopback.
"""

from __future__ import annotations

import asyncio
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from certmgr.keys import InsecureDevSealer
from certmgr.policy.model import PolicyStatus
from certmgr.policy.rpc import PolicyReader, check_measurement
from proxy.config import Config
from proxy.control.governance import Governor, governed_measurement_id
from proxy.gatestate import GateState, state_path
from proxy.runtime import Runtime
from tests.helpers.chain import (
    Anvil,
    AnvilFactory,
    LyingFactory,
    anvil_account0,
    deploy_policy,
    owner_tx,
)
from tests.helpers.ports import free_port
from tests.helpers.proxies import make_config

MINE = b"\x01" * 32
OTHER = b"\x02" * 32


@dataclass
class Chain:
    node: Anvil
    address: str


@pytest.fixture
async def chain(anvil: AnvilFactory) -> Chain:
    node = await anvil()
    address = await deploy_policy(node.url, await anvil_account0(node.url))
    await owner_tx(node.url, address, "allow", MINE, "build 1")
    return Chain(node, address)


async def test_two_agreeing_endpoints_outvote_a_liar(
    chain: Chain,
    lying_rpc: LyingFactory,
) -> None:
    honest = await lying_rpc(chain.node.url, lie=False)
    liar = await lying_rpc(chain.node.url)
    reader = PolicyReader([chain.node.url, liar.url, honest.url], chain.address, quorum=2)
    try:
        outcome, results = await reader.read_once()
    finally:
        await reader.close()
    assert liar.lies >= 1  # the liar did answer, with its forgery
    assert outcome.snapshot is not None
    assert outcome.snapshot.entries == ((MINE, "build 1"),)
    assert outcome.snapshot.version == 1
    assert set(outcome.agreeing) == {chain.node.url, honest.url}
    assert outcome.dissenting == (liar.url,)
    forged = next(r for r in results if r.url == liar.url)
    assert forged.snapshot is not None and forged.snapshot.version == 999


async def test_a_liar_cannot_win_or_split_a_low_quorum(
    chain: Chain,
    lying_rpc: LyingFactory,
) -> None:
    """With quorum 1 and a conflicting answer there is no policy (fail closed), not the liar's."""
    liar = await lying_rpc(chain.node.url)
    reader = PolicyReader([chain.node.url, liar.url], chain.address, quorum=1)
    try:
        outcome, _ = await reader.read_once()
    finally:
        await reader.close()
    assert outcome.snapshot is None
    assert "conflicting" in outcome.reason


async def test_unreachable_endpoint_is_reported_and_the_rest_still_agree(chain: Chain) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    reader = PolicyReader(
        [chain.node.url, dead, chain.node.url.replace("127.0.0.1", "localhost")],
        chain.address,
        quorum=2,
        timeout=2.0,
    )
    try:
        outcome, _ = await reader.read_once()
    finally:
        await reader.close()
    assert outcome.snapshot is not None
    assert [u for u, _ in outcome.failed] == [dead]


async def test_check_measurement_for_verifiers(chain: Chain, lying_rpc: LyingFactory) -> None:
    liar = await lying_rpc(chain.node.url)
    honest = await lying_rpc(chain.node.url, lie=False)
    urls = [chain.node.url, honest.url, liar.url]
    v = await check_measurement(urls, chain.address, MINE, quorum=2)
    assert v.allowed and v.decision.label == "build 1"
    assert v.outcome.dissenting == (liar.url,)
    # The liar's forged id is not trusted.
    forged = await check_measurement(urls, chain.address, liar.forged_id, quorum=2)
    assert forged.decision.verdict is PolicyStatus.NOT_ALLOWED
    await owner_tx(chain.node.url, chain.address, "revoke", MINE)
    revoked = await check_measurement(urls, chain.address, MINE, quorum=2)
    assert revoked.decision.verdict is PolicyStatus.NOT_ALLOWED
    assert revoked.decision.version == 2
    # Only the liar reachable: no quorum, denied.
    alone = await check_measurement([liar.url], chain.address, liar.forged_id, quorum=1)
    assert alone.allowed  # a single liar can lie: why quorum exists
    none = await check_measurement([liar.url, honest.url], chain.address, MINE, quorum=2)
    assert none.decision.verdict is PolicyStatus.NO_POLICY


def _governance_config(state: Path, chain: Chain, **extra: object) -> str:
    opts = {
        "mode": '"enforce"',
        "rpc_urls": f'["{chain.node.url}"]',
        "contract": f'"{chain.address}"',
        "self_measurement": f'"0x{MINE.hex()}"',
        "refresh_period": "0.2",
        "max_staleness": "1.5",
        "rpc_timeout": "0.3",
    }
    opts.update({k: str(v) for k, v in extra.items()})
    return "[governance]\n" + "\n".join(f"{k} = {v}" for k, v in opts.items())


def _governed(cfg: Config) -> bytes:
    return governed_measurement_id(cfg.governance, Runtime(InsecureDevSealer()))


async def test_outage_shorter_than_bound_keeps_last_good_longer_fails_closed(
    chain: Chain, tmp_path: Path
) -> None:
    cfg = await asyncio.to_thread(
        make_config, "http://127.0.0.1:1", _governance_config(tmp_path, chain), tmp_path
    )
    gov = Governor(cfg, _governed(cfg))
    await gov.start()
    try:
        state = await gov.refresh()
        assert state.serving and state.verdict == "allowed"
        published = GateState.from_json(await asyncio.to_thread(state_path(cfg).read_bytes))
        assert published.serving and published.version == 1
        chain.node.pause()  # the only endpoint stops answering
        state = await gov.refresh()  # within the bound: last good snapshot still counts
        assert state.serving
        assert gov.outcome is not None and gov.outcome.snapshot is None
        for _ in range(40):  # bounded: the bound is 1.5 s
            state = await gov.refresh()
            if not state.serving:
                break
            await asyncio.sleep(0.1)
        assert not state.serving
        assert state.verdict == "stale"
        assert "old" in state.reason
        published = GateState.from_json(await asyncio.to_thread(state_path(cfg).read_bytes))
        assert not published.serving
        chain.node.resume()  # the chain is back: serving again (resume_when_allowed)
        assert (await gov.refresh()).serving
    finally:
        chain.node.resume()
        await gov.close()


async def test_revocation_and_reallow_as_configured(chain: Chain, tmp_path: Path) -> None:
    for resume in (True, False):
        state_dir = tmp_path / str(resume)
        text = _governance_config(state_dir, chain, resume_when_allowed=str(resume).lower())
        cfg = await asyncio.to_thread(make_config, "http://127.0.0.1:1", text, state_dir)
        gov = Governor(cfg, _governed(cfg))
        await gov.start()
        try:
            assert (await gov.refresh()).serving
            await owner_tx(chain.node.url, chain.address, "revoke", MINE)
            state = await gov.refresh()
            assert not state.serving and state.verdict == "not_allowed"
            await owner_tx(chain.node.url, chain.address, "allow", MINE, "again")
            state = await gov.refresh()
            assert state.verdict == "allowed"
            assert state.serving is resume
            assert state.latched is not resume
        finally:
            await gov.close()


async def test_snapshot_policy_plugs_into_the_verifier(chain: Chain) -> None:
    """certmgr.attest.policycheck's PolicyCheck, answered from one quorum-agreed snapshot."""
    from certmgr.policy.model import SnapshotPolicy
    from certmgr.policy.rpc import read_snapshot

    await asyncio.to_thread(importlib.import_module, "certmgr.attest.verify")

    snapshot, _ = await read_snapshot([chain.node.url], chain.address)
    check = SnapshotPolicy(snapshot)
    assert check(MINE, None).allowed
    denied = check(OTHER, None)
    assert not denied.allowed and "not allowed by policy version 1" in denied.reason
    none = SnapshotPolicy(None, "no quorum: best agreement 0 of 2, need 2")
    assert not none(MINE, None).allowed
