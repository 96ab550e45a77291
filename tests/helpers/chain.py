"""Real Ethereum peers for the governance tests: anvil from the npm registry, on loopback.

- :func:`start_anvil` / :func:`stop_anvil`: anvil 1.7.1 (npm ``@foundry-rs/anvil``, pinned
  by contracts_abi/package-lock.json) as ``anvil --host 127.0.0.1 --port P --silent``, an
  :class:`Anvil` (url, pid), stopped by its PID. The ``anvil`` fixture
  (tests/integration/conftest.py) starts them with ``await anvil()`` and stops every node when
  the test ends; anvil missing is a failure with the command that installs it, never a skip.
- :func:`deploy_policy`: deploys the committed bytecode with a given owner.
- :func:`start_lying_rpc` (the ``lying_rpc`` fixture): an aiohttp JSON-RPC relay in front of a
  node that rewrites ``eth_call`` results (returns a policy with a forged id), i.e. a lying
  endpoint that speaks real JSON-RPC.
- :func:`new_account` / :func:`fund`: fresh keys funded with ``anvil_setBalance``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from eth_abi import encode as abi_encode

from certmgr.eth import eth_import_guard
from certmgr.policy.artifacts import ABI, BYTECODE

# Importing certmgr.policy also loads eth-hash's keccak backend (file I/O) now, not in a test.
from certmgr.policy.contract import decode_revert
from tests.helpers.ports import free_port

with eth_import_guard():  # keep the test process's recursion limit (see eth_import_guard)
    from eth_account import Account
    from eth_account.signers.local import LocalAccount
    from web3 import AsyncHTTPProvider, AsyncWeb3
    from web3.exceptions import ContractLogicError

__all__ = ["AsyncWeb3", "ContractCalls", "ContractLogicError"]  # re-exported: import them here


class ContractCalls:
    """Transactions against a deployed contract, for test dataclasses with ``w3`` and ``c``."""

    w3: AsyncWeb3[Any]

    async def send(self, fn: Any, sender: str) -> Any:
        """Send ``fn`` from ``sender`` and return its receipt; it must succeed."""
        tx = await fn.transact({"from": sender})
        receipt = await self.w3.eth.wait_for_transaction_receipt(tx, timeout=10)
        assert receipt["status"] == 1
        return receipt

    async def reverts(self, fn: Any, sender: str) -> str:
        """Send ``fn`` from ``sender``; it must revert. Returns the decoded custom error."""
        with pytest.raises(ContractLogicError) as info:
            await fn.transact({"from": sender})
        data = info.value.data
        assert isinstance(data, str), data
        return decode_revert(bytes.fromhex(data.removeprefix("0x")))


ROOT = Path(__file__).resolve().parents[2]
# `node_modules/.bin/anvil` is a node wrapper that spawns the platform binary shipped in the
# optional dependency: signals sent to the wrapper's PID (SIGSTOP for an outage, SIGTERM at
# teardown) would not reach the node itself. Run the binary the wrapper would run.
_NODE_MODULES = ROOT / "contracts_abi" / "node_modules"
ANVIL = _NODE_MODULES / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


@dataclass
class Anvil:
    port: int
    proc: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pause(self) -> None:
        """Freeze the node (an outage without losing its state)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


async def rpc(session: aiohttp.ClientSession, url: str, method: str, params: list[Any]) -> Any:
    async with session.post(
        url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    ) as r:
        body = await r.json()
    if "error" in body:
        raise RuntimeError(f"{method}: {body['error']}")
    return body["result"]


AnvilFactory = Callable[..., Awaitable[Anvil]]


async def start_anvil(nodes: list[Anvil]) -> Anvil:
    """Start anvil on a free loopback port and wait until it answers JSON-RPC.

    Every node started (also one that did not come up) is appended to ``nodes``, for the
    caller to stop with :func:`stop_anvil`.
    """
    for _attempt in range(5):
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            str(ANVIL),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--silent",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        node = Anvil(port, proc)
        nodes.append(node)
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                if proc.returncode is not None:
                    break
                try:
                    await rpc(s, node.url, "eth_chainId", [])
                    return node
                except (aiohttp.ClientError, OSError):
                    await asyncio.sleep(0.05)
        if proc.returncode is None:
            raise RuntimeError(f"anvil on port {port} did not answer within 5 s")
    raise RuntimeError("anvil did not start (port races?)")


async def stop_anvil(node: Anvil) -> None:
    """Stop a node by its PID (resuming it first if it was paused)."""
    if node.proc.returncode is None:
        os.kill(node.pid, signal.SIGCONT)
        node.proc.terminate()
        try:
            async with asyncio.timeout(5):
                await node.proc.wait()
        except TimeoutError:
            node.proc.kill()
            await node.proc.wait()


def new_account() -> LocalAccount:
    acct: LocalAccount = Account.create()
    return acct


async def fund(url: str, address: str, wei: int = 10**20) -> None:
    async with aiohttp.ClientSession() as s:
        await rpc(s, url, "anvil_setBalance", [address, hex(wei)])


def web3_for(url: str) -> AsyncWeb3[Any]:
    return AsyncWeb3(AsyncHTTPProvider(url, exception_retry_configuration=None))


async def deploy_policy(url: str, owner: str) -> str:
    """Deploy the committed bytecode from anvil's first unlocked account, owned by ``owner``."""
    w3 = web3_for(url)
    try:
        deployer = (await w3.eth.accounts)[0]
        factory = w3.eth.contract(abi=ABI, bytecode=BYTECODE)
        tx = await factory.constructor(owner).transact({"from": deployer})
        receipt = await w3.eth.wait_for_transaction_receipt(tx, timeout=10)
        address = receipt["contractAddress"]
        assert address
        return str(address)
    finally:
        await w3.provider.disconnect()  # type: ignore[attr-defined]


# -- a lying JSON-RPC endpoint ---------------------------------------------------------------


@dataclass
class LyingRpc:
    url: str
    forged_id: bytes
    lies: int = 0


LyingFactory = Callable[..., Awaitable[LyingRpc]]


async def start_lying_rpc(
    upstream: str,
    *,
    lie: bool,
    runners: list[web.AppRunner],
    sessions: list[aiohttp.ClientSession],
) -> LyingRpc:
    """A relay in front of ``upstream`` on loopback answering every ``eth_call`` with a forged
    policy (version 999, one forged id), everything else relayed unchanged; ``lie=False``
    relays everything. Its runner and session are appended to ``runners`` and ``sessions``
    for the caller to clean up."""
    session = aiohttp.ClientSession()
    sessions.append(session)
    liar = LyingRpc(url="", forged_id=b"\x66" * 32)

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        if lie and body.get("method") == "eth_call":
            liar.lies += 1
            forged = abi_encode(
                ["uint256", "bytes32[]", "string[]"], [999, [liar.forged_id], ["forged"]]
            )
            return web.json_response(
                {"jsonrpc": "2.0", "id": body.get("id"), "result": "0x" + forged.hex()}
            )
        async with session.post(upstream, json=body) as r:
            data = await r.read()
        return web.Response(body=data, content_type="application/json")

    app = web.Application()
    app.router.add_post("/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    liar.url = f"http://127.0.0.1:{port}"
    return liar


async def owner_tx(url: str, address: str, function: str, *args: Any) -> int:
    """Send ``function(*args)`` from anvil's first (unlocked) account; returns the block."""
    w3 = web3_for(url)
    try:
        sender = (await w3.eth.accounts)[0]
        c = w3.eth.contract(address=w3.to_checksum_address(address), abi=ABI)
        tx = await getattr(c.functions, function)(*args).transact({"from": sender})
        receipt = await w3.eth.wait_for_transaction_receipt(tx, timeout=10)
        assert receipt["status"] == 1
        return int(receipt["blockNumber"])
    finally:
        await w3.provider.disconnect()  # type: ignore[attr-defined]


async def anvil_account0(url: str) -> str:
    w3 = web3_for(url)
    try:
        return str((await w3.eth.accounts)[0])
    finally:
        await w3.provider.disconnect()  # type: ignore[attr-defined]
