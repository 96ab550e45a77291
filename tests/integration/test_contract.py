"""The MeasurementPolicy contract on a real node (anvil from npm) through web3.py.

Covers every function, access control (custom errors decoded by name), events, replace
semantics, guardian limits, the two-step ownership transfer and the version counter; and
that the committed ABI/bytecode are exactly what the pinned solc produces from the source.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from certmgr.policy.artifacts import ABI
from tests.helpers.chain import (
    ROOT,
    AnvilFactory,
    AsyncWeb3,
    ContractCalls,
    deploy_policy,
    rpc,
    web3_for,
)

ID_A = b"\xa1" * 32
ID_B = b"\xb2" * 32
ID_C = b"\xc3" * 32


@dataclass
class Deployed(ContractCalls):
    w3: AsyncWeb3[Any]
    c: Any
    owner: str
    other: str
    guardian: str
    third: str
    url: str

    async def snapshot(self) -> tuple[int, list[bytes], list[str]]:
        v, ids, labels = await self.c.functions.snapshot().call()
        return int(v), list(ids), list(labels)


@pytest.fixture
async def deployed(anvil: AnvilFactory) -> AsyncIterator[Deployed]:
    node = await anvil()
    w3 = web3_for(node.url)
    accounts = await w3.eth.accounts
    address = await deploy_policy(node.url, accounts[0])
    c = w3.eth.contract(address=address, abi=ABI)
    yield Deployed(w3, c, accounts[0], accounts[1], accounts[2], accounts[3], node.url)
    await w3.provider.disconnect()  # type: ignore[attr-defined]


def test_committed_artifacts_match_a_fresh_compile() -> None:
    """Recompile with the pinned solc (npm lock) and compare every artifact byte for byte."""
    import subprocess

    solcjs = ROOT / "contracts_abi" / "node_modules" / ".bin" / "solcjs"
    if not solcjs.exists():
        pytest.fail("solc not installed: run `npm ci --prefix contracts_abi`")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "contracts_abi" / "compile.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "byte-identical" in proc.stdout


async def test_initial_state(deployed: Deployed) -> None:
    d = deployed
    # What runs on chain is the committed build (README: how to verify a deployment).
    build = json.loads(
        await asyncio.to_thread((ROOT / "contracts_abi" / "MeasurementPolicy.build.json").read_text)
    )
    assert (await d.w3.eth.get_code(d.c.address)).hex() == build["deployed_bytecode"]
    assert await d.c.functions.owner().call() == d.owner
    assert await d.c.functions.pendingOwner().call() == "0x" + "00" * 20
    assert await d.c.functions.guardian().call() == "0x" + "00" * 20
    assert await d.snapshot() == (0, [], [])
    assert await d.c.functions.count().call() == 0
    assert await d.c.functions.MAX_MEASUREMENTS().call() == 256
    assert await d.c.functions.MAX_LABEL_BYTES().call() == 64


async def test_allow_views_event_and_version(deployed: Deployed) -> None:
    d = deployed
    receipt = await d.send(d.c.functions.allow(ID_A, "build 1.0"), d.owner)
    (ev,) = d.c.events.MeasurementAllowed().process_receipt(receipt)
    assert ev["args"]["id"] == ID_A
    assert ev["args"]["label"] == "build 1.0"
    assert ev["args"]["version"] == 1
    await d.send(d.c.functions.allow(ID_B, ""), d.owner)
    assert await d.c.functions.isAllowed(ID_A).call() is True
    assert await d.c.functions.isAllowed(ID_C).call() is False
    assert await d.c.functions.measurement(ID_A).call() == [True, "build 1.0"]
    assert await d.c.functions.measurement(ID_C).call() == [False, ""]
    assert await d.snapshot() == (2, [ID_A, ID_B], ["build 1.0", ""])
    assert await d.c.functions.version().call() == 2


async def test_allow_rejections(deployed: Deployed) -> None:
    d = deployed
    assert await d.reverts(d.c.functions.allow(ID_A, "x"), d.other) == f"NotOwner({d.other})"
    await d.send(d.c.functions.allow(ID_A, "x"), d.owner)
    assert await d.reverts(d.c.functions.allow(ID_A, "y"), d.owner) == (
        f"AlreadyAllowed(0x{ID_A.hex()})"
    )
    assert await d.reverts(d.c.functions.allow(b"\0" * 32, "z"), d.owner) == "ZeroMeasurement()"
    assert await d.reverts(d.c.functions.allow(ID_B, "x" * 65), d.owner) == "LabelTooLong(65, 64)"
    await d.send(d.c.functions.allow(ID_B, "x" * 64), d.owner)  # the bound itself is fine
    # Failed calls changed nothing, the version counted only the two successes.
    assert (await d.snapshot())[0] == 2


async def test_list_is_bounded(deployed: Deployed) -> None:
    d = deployed
    nonce = await d.w3.eth.get_transaction_count(d.owner)
    # One JSON-RPC batch with explicit nonces: quick and free of nonce races.
    batch = [
        {
            "jsonrpc": "2.0",
            "id": i,
            "method": "eth_sendTransaction",
            "params": [
                {
                    "from": d.owner,
                    "to": d.c.address,
                    "gas": hex(200_000),
                    "nonce": hex(nonce + i),
                    "data": d.c.encode_abi("allow", [(i + 1).to_bytes(32, "big"), ""]),
                }
            ],
        }
        for i in range(256)
    ]
    async with aiohttp.ClientSession() as s:
        # Into the pool first, then mined in nonce order (automine would race the batch).
        await rpc(s, d.url, "evm_setAutomine", [False])
        async with s.post(d.url, json=batch) as r:
            answers = await r.json()
        assert all("result" in a for a in answers), [a for a in answers if "error" in a][:3]
        await rpc(s, d.url, "anvil_mine", ["0x4"])
        await rpc(s, d.url, "evm_setAutomine", [True])
    assert await d.c.functions.count().call() == 256
    assert await d.reverts(d.c.functions.allow(ID_A, ""), d.owner) == "TooManyMeasurements(256)"


async def test_revoke_keeps_the_rest(deployed: Deployed) -> None:
    d = deployed
    for mid, label in ((ID_A, "a"), (ID_B, "b"), (ID_C, "c")):
        await d.send(d.c.functions.allow(mid, label), d.owner)
    receipt = await d.send(d.c.functions.revoke(ID_A), d.owner)
    (ev,) = d.c.events.MeasurementRevoked().process_receipt(receipt)
    assert (ev["args"]["id"], ev["args"]["by"], ev["args"]["version"]) == (ID_A, d.owner, 4)
    v, ids, labels = await d.snapshot()
    assert v == 4
    assert sorted(zip(ids, labels, strict=True)) == [(ID_B, "b"), (ID_C, "c")]
    assert await d.c.functions.measurement(ID_A).call() == [False, ""]
    assert await d.reverts(d.c.functions.revoke(ID_A), d.owner) == f"NotAllowed(0x{ID_A.hex()})"
    assert await d.reverts(d.c.functions.revoke(ID_B), d.other) == (
        f"NotOwnerOrGuardian({d.other})"
    )
    # Re-allowing a revoked id works and gets a fresh label.
    await d.send(d.c.functions.allow(ID_A, "a2"), d.owner)
    assert await d.c.functions.measurement(ID_A).call() == [True, "a2"]


async def test_replace_is_atomic(deployed: Deployed) -> None:
    d = deployed
    await d.send(d.c.functions.allow(ID_A, "1.0"), d.owner)
    await d.send(d.c.functions.allow(ID_C, "other"), d.owner)
    receipt = await d.send(d.c.functions.replace(ID_A, ID_B, "1.1"), d.owner)
    (ev,) = d.c.events.MeasurementReplaced().process_receipt(receipt)
    assert ev["args"]["oldId"] == ID_A
    assert ev["args"]["newId"] == ID_B
    assert ev["args"]["label"] == "1.1"
    assert ev["args"]["version"] == 3  # one bump for the whole replace
    v, ids, labels = await d.snapshot()
    assert v == 3
    assert sorted(zip(ids, labels, strict=True)) == [(ID_B, "1.1"), (ID_C, "other")]
    # Old id not listed -> nothing changes (no half-applied replace).
    assert await d.reverts(d.c.functions.replace(ID_A, b"\x01" * 32, "x"), d.owner) == (
        f"NotAllowed(0x{ID_A.hex()})"
    )
    # New id already listed -> the removal of the old one is rolled back too.
    assert await d.reverts(d.c.functions.replace(ID_B, ID_C, "x"), d.owner) == (
        f"AlreadyAllowed(0x{ID_C.hex()})"
    )
    assert await d.reverts(d.c.functions.replace(ID_B, ID_B, "x"), d.owner) == (
        f"SameMeasurement(0x{ID_B.hex()})"
    )
    assert await d.reverts(d.c.functions.replace(ID_B, ID_A, "x"), d.other) == (
        f"NotOwner({d.other})"
    )
    assert await d.snapshot() == (v, ids, labels)


async def test_guardian_can_only_revoke(deployed: Deployed) -> None:
    d = deployed
    await d.send(d.c.functions.allow(ID_A, "a"), d.owner)
    await d.send(d.c.functions.allow(ID_B, "b"), d.owner)
    # Before it is set, the future guardian is nobody.
    assert await d.reverts(d.c.functions.revoke(ID_A), d.guardian) == (
        f"NotOwnerOrGuardian({d.guardian})"
    )
    assert await d.reverts(d.c.functions.setGuardian(d.guardian), d.other) == (
        f"NotOwner({d.other})"
    )
    receipt = await d.send(d.c.functions.setGuardian(d.guardian), d.owner)
    (ev,) = d.c.events.GuardianChanged().process_receipt(receipt)
    assert (ev["args"]["previousGuardian"], ev["args"]["newGuardian"]) == (
        "0x" + "00" * 20,
        d.guardian,
    )
    assert await d.c.functions.guardian().call() == d.guardian
    receipt = await d.send(d.c.functions.revoke(ID_A), d.guardian)
    (ev,) = d.c.events.MeasurementRevoked().process_receipt(receipt)
    assert ev["args"]["by"] == d.guardian
    for fn in (
        d.c.functions.allow(ID_C, "c"),
        d.c.functions.replace(ID_B, ID_C, "c"),
        d.c.functions.setGuardian(d.other),
        d.c.functions.transferOwnership(d.guardian),
    ):
        assert await d.reverts(fn, d.guardian) == f"NotOwner({d.guardian})"
    # Clearing the guardian takes the power away again.
    await d.send(d.c.functions.setGuardian("0x" + "00" * 20), d.owner)
    assert await d.reverts(d.c.functions.revoke(ID_B), d.guardian) == (
        f"NotOwnerOrGuardian({d.guardian})"
    )


async def test_two_step_ownership_transfer(deployed: Deployed) -> None:
    d = deployed
    assert await d.reverts(d.c.functions.transferOwnership(d.other), d.other) == (
        f"NotOwner({d.other})"
    )
    receipt = await d.send(d.c.functions.transferOwnership(d.other), d.owner)
    (ev,) = d.c.events.OwnershipTransferStarted().process_receipt(receipt)
    assert (ev["args"]["previousOwner"], ev["args"]["newOwner"]) == (d.owner, d.other)
    # Not yet the owner: still the old one until accepted.
    assert await d.c.functions.owner().call() == d.owner
    assert await d.c.functions.pendingOwner().call() == d.other
    assert await d.reverts(d.c.functions.allow(ID_A, ""), d.other) == f"NotOwner({d.other})"
    assert await d.reverts(d.c.functions.acceptOwnership(), d.third) == (
        f"NotPendingOwner({d.third})"
    )
    receipt = await d.send(d.c.functions.acceptOwnership(), d.other)
    (ev,) = d.c.events.OwnershipTransferred().process_receipt(receipt)
    assert (ev["args"]["previousOwner"], ev["args"]["newOwner"]) == (d.owner, d.other)
    assert await d.c.functions.owner().call() == d.other
    assert await d.c.functions.pendingOwner().call() == "0x" + "00" * 20
    assert await d.reverts(d.c.functions.allow(ID_A, ""), d.owner) == f"NotOwner({d.owner})"
    await d.send(d.c.functions.allow(ID_A, ""), d.other)
    # A second accept is refused (nothing pending), and the zero address cancels a transfer.
    assert await d.reverts(d.c.functions.acceptOwnership(), d.other) == (
        f"NotPendingOwner({d.other})"
    )
    await d.send(d.c.functions.transferOwnership(d.third), d.other)
    await d.send(d.c.functions.transferOwnership("0x" + "00" * 20), d.other)
    assert await d.reverts(d.c.functions.acceptOwnership(), d.third) == (
        f"NotPendingOwner({d.third})"
    )
    # transfer, accept, allow, transfer, cancel: every change bumped the version.
    assert await d.c.functions.version().call() == 5


async def test_version_orders_snapshots_across_blocks(deployed: Deployed) -> None:
    """Reading at an older block gives the older state: what the quorum reader relies on."""
    d = deployed
    r1 = await d.send(d.c.functions.allow(ID_A, "a"), d.owner)
    await d.send(d.c.functions.revoke(ID_A), d.owner)
    old = await d.c.functions.snapshot().call(block_identifier=r1["blockNumber"])
    assert old == [1, [ID_A], ["a"]]
    assert await d.snapshot() == (2, [], [])
    await asyncio.sleep(0)
