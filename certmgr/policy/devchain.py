"""The embedded development chain: an in-process EVM (eth-tester + py-evm) with the policy.

For ``teeproxy demo`` and ``[governance] embedded_chain = true``: a newcomer sees governance
work with no chain at all. :meth:`EmbeddedChain.start`

1. creates a fresh in-memory chain (eth-tester's PyEVMBackend; nothing persists);
2. creates an owner key, funds it, and writes it ONLY as an encrypted JSON keystore
   (Web3 Secret Storage, eth-account) to ``<dir>/dev-owner.keystore.json``; its password is
   :data:`DEV_KEYSTORE_PASSWORD`, a published development constant, so this key protects
   nothing and exists only to show the operator CLI on the embedded chain;
3. deploys ``MeasurementPolicy`` (the committed bytecode) owned by that key, allows the
   given measurement ids and registers the given receipt signers (``registerSigner``), so
   the demo's own receipts verify on chain (``verifyReceipt``). The demo registers its own
   signing address directly: it is the same process, so there is no attestation to check
   first, unlike ``teeproxy policy register-signer https://HOST`` against a real proxy;
4. serves the chain as Ethereum JSON-RPC over HTTP on a loopback address, so the proxy's
   policy reader and ``teeproxy policy --rpc URL`` use exactly the code paths they use
   against a real node. The connection details go to ``<dir>/embedded-chain.json``.

py-evm is synchronous and not thread-safe: every chain call runs in one worker thread at a
time (an asyncio.Lock around asyncio.to_thread), never on the event loop.

Wire format (Ethereum JSON-RPC spec): quantities as 0x-hex, data as 0x-hex, camelCase keys;
web3's eth-tester middleware produces camelCase values, :func:`to_wire` encodes them.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from certmgr.eth import eth_import_guard
from certmgr.keys import atomic_write
from certmgr.log import policy_log as log
from certmgr.policy.artifacts import ABI, BYTECODE

__all__ = ["DEV_KEYSTORE_PASSWORD", "EmbeddedChain", "to_wire"]


DEV_KEYSTORE_PASSWORD = "teeproxy-dev"  # noqa: S105 - published on purpose: dev chain only
_MAX_REQUEST = 256 * 1024


def to_wire(value: Any) -> Any:
    """web3/eth-tester Python values -> JSON-RPC wire values."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return hex(value)
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    if isinstance(value, Mapping):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [to_wire(v) for v in value]
    return str(value)


def _setup(
    allow: tuple[tuple[bytes, str], ...],
    keystore: Path,
    signers: tuple[tuple[bytes, bytes], ...] = (),
) -> tuple[Any, str, str]:
    """Build the chain, the owner keystore, the contract (blocking: runs in a thread)."""
    # py-evm and eth-tester take about a second to import (many files): imported here, in
    # the thread that builds the chain, never on the event loop nor by importing this module.
    with eth_import_guard():
        from eth_account import Account  # noqa: PLC0415 - see above
        from eth_tester import EthereumTester, PyEVMBackend  # type: ignore[import-untyped]  # noqa: PLC0415
        from web3 import Web3  # noqa: PLC0415 - see above
        from web3.providers.eth_tester import EthereumTesterProvider  # noqa: PLC0415 - see above

    tester = EthereumTester(PyEVMBackend())
    w3 = Web3(EthereumTesterProvider(tester))
    owner = Account.create()
    encrypted = Account.encrypt(owner.key, DEV_KEYSTORE_PASSWORD)
    atomic_write(keystore, json.dumps(encrypted).encode(), 0o600)
    funder = w3.eth.accounts[0]
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction(
            {"from": funder, "to": owner.address, "value": Web3.to_wei(1000, "ether")}
        )
    )
    factory = w3.eth.contract(abi=ABI, bytecode=BYTECODE)
    receipt = w3.eth.wait_for_transaction_receipt(
        factory.constructor(owner.address).transact({"from": funder})
    )
    address = receipt["contractAddress"]
    contract = w3.eth.contract(address=address, abi=ABI)
    calls = [contract.functions.allow(mid, label) for mid, label in allow]
    calls += [
        contract.functions.registerSigner(Web3.to_checksum_address(signer), mid)
        for signer, mid in signers
    ]
    for fn in calls:
        tx = fn.build_transaction(
            {"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address)}
        )
        signed = owner.sign_transaction(tx)
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))
    return w3, str(address), str(owner.address)


@dataclass
class EmbeddedChain:
    """A running embedded chain with the policy contract and its JSON-RPC listener."""

    w3: Any
    address: str
    owner: str
    keystore: Path
    url: str = ""
    _runner: web.AppRunner | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    async def start(
        cls,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow: tuple[tuple[bytes, str], ...] = (),
        signers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> EmbeddedChain:
        """``allow``: (measurement id, label) pairs; ``signers``: (20-byte address,
        measurement id) pairs registered after them (each id must be among ``allow``)."""
        keystore = directory / "dev-owner.keystore.json"
        w3, address, owner = await asyncio.to_thread(_setup, allow, keystore, signers)
        chain = cls(w3, address, owner, keystore)
        await chain._serve(host, port)
        info = {
            "rpc": chain.url,
            "contract": address,
            "owner": owner,
            "keystore": str(keystore),
            "keystore_password": f"{DEV_KEYSTORE_PASSWORD} (development constant)",
            "signers": ["0x" + signer.hex() for signer, _ in signers],
        }
        await asyncio.to_thread(
            atomic_write, directory / "embedded-chain.json", json.dumps(info, indent=2).encode()
        )
        log.warning(
            "embedded development chain (in-process EVM, NOT a real chain) at %s, "
            "policy contract %s, owner %s",
            chain.url,
            address,
            owner,
        )
        return chain

    async def _serve(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=_MAX_REQUEST)
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.url = f"http://{shown}:{bound[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _call(self, method: str, params: list[Any]) -> Any:
        return self.w3.manager.request_blocking(method, params)

    async def call(self, method: str, params: list[Any]) -> Any:
        """One JSON-RPC method on the chain (serialized; in a thread)."""
        async with self._lock:
            return await asyncio.to_thread(self._call, method, params)

    async def _handle(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(None, -32700, "parse error")
        if isinstance(body, list):
            if len(body) > 100:
                return _error(None, -32600, "batch too large")
            answers = [await self._one(item) for item in body]
            return web.json_response(answers)
        return web.json_response(await self._one(body))

    async def _one(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict) or not isinstance(item.get("method"), str):
            return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "bad"}}
        rid = item.get("id")
        params = item.get("params") or []
        if not isinstance(params, list):
            params = [params]
        try:
            result = await self.call(item["method"], params)
        except Exception as e:  # noqa: BLE001 - every chain error becomes a JSON-RPC error
            log.debug("embedded chain %s failed: %r", item["method"], e)
            return {"jsonrpc": "2.0", "id": rid, "error": _rpc_error(e)}
        return {"jsonrpc": "2.0", "id": rid, "result": to_wire(result)}


def _rpc_error(e: Exception) -> dict[str, Any]:
    """A revert keeps its return data (code 3, as geth/anvil do) so clients decode it."""
    data = getattr(e, "data", None)
    if isinstance(data, str) and data.startswith("0x"):
        return {"code": 3, "message": "execution reverted", "data": data}
    # eth-tester raises TransactionFailed("execution reverted: b'...'"): the revert data is
    # the repr of a bytes literal, read back with literal_eval (parses literals only).
    for a in getattr(e, "args", ()):
        if isinstance(a, bytes | bytearray) and len(a) >= 4:
            return {"code": 3, "message": "execution reverted", "data": "0x" + bytes(a).hex()}
        if isinstance(a, str) and a.startswith("execution reverted: b") and len(a) < 20_000:
            with contextlib.suppress(ValueError, SyntaxError):
                raw = ast.literal_eval(a.removeprefix("execution reverted: "))
                if isinstance(raw, bytes):
                    return {"code": 3, "message": "execution reverted", "data": "0x" + raw.hex()}
    return {"code": -32000, "message": str(e)[:500] or type(e).__name__}


def _error(rid: Any, code: int, message: str) -> web.Response:
    return web.json_response(
        {"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": message}}
    )
