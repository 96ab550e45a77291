"""Reading the measurement policy contract from one or more Ethereum JSON-RPC endpoints.

Owns the I/O half of the policy reader (the decisions are in :mod:`certmgr.policy.model`):

1. every endpoint is asked for its head (``eth_blockNumber``) and chain id;
2. the target block is the newest block that at least ``quorum`` endpoints have
   (:func:`certmgr.policy.model.target_block`), so one lying or lagging head cannot choose it;
3. every endpoint is asked for that block's hash and for ``snapshot()`` *at that block*
   (``eth_call`` with a block number, Ethereum JSON-RPC spec, ``eth_call`` block parameter);
4. :func:`certmgr.policy.model.vote` keeps the answer ``quorum`` endpoints agree on, byte for byte.
   Endpoints outside the agreement are reported by URL with what they did.

Everything an endpoint returns is bounded before it is trusted: at most MAX_MEASUREMENTS ids
of exactly 32 bytes, labels of at most MAX_LABEL_BYTES (PolicySnapshot validates), and a
per-call timeout. web3's own retries are disabled: a refresh round is retried by its caller
on the next period, and an outage must show up as an error, not as a hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from eth_utils.address import to_checksum_address

from certmgr.errors import PolicyError
from certmgr.eth import eth_import_guard
from certmgr.log import policy_log as log
from certmgr.policy.artifacts import ABI
from certmgr.policy.model import (
    EndpointResult,
    PolicyDecision,
    PolicySnapshot,
    SnapshotPolicy,
    VoteOutcome,
    decide,
    target_block,
    vote,
)

with eth_import_guard():
    from web3 import AsyncHTTPProvider, AsyncWeb3
    from web3.exceptions import Web3Exception


__all__ = [
    "PolicyReader",
    "PolicyReading",
    "check_measurement",
    "make_web3",
    "policy_from_chain",
    "read_snapshot",
]


def make_web3(url: str, timeout: float) -> AsyncWeb3[Any]:
    """An AsyncWeb3 for one endpoint: a hard per-call timeout, no hidden retries."""
    provider = AsyncHTTPProvider(
        url,
        request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
        exception_retry_configuration=None,
    )
    return AsyncWeb3(provider)


class PolicyReader:
    """Reads one consistent, quorum-agreed :class:`PolicySnapshot` per call to read_once()."""

    def __init__(
        self,
        rpc_urls: Sequence[str],
        address: str,
        quorum: int = 1,
        *,
        timeout: float = 10.0,
        chain_id: int = 0,
    ) -> None:
        if not rpc_urls:
            raise PolicyError("at least one RPC endpoint is required")
        if len(set(rpc_urls)) != len(rpc_urls):
            raise PolicyError("the same RPC endpoint is listed twice (it would vote twice)")
        if not 1 <= quorum <= len(rpc_urls):
            raise PolicyError(f"quorum must be 1..{len(rpc_urls)}, got {quorum}")
        self.urls = tuple(rpc_urls)
        self.address = to_checksum_address(address)
        self.quorum = quorum
        self.timeout = timeout
        self.chain_id = chain_id
        self._w3 = {u: make_web3(u, timeout) for u in self.urls}

    async def close(self) -> None:
        for w3 in self._w3.values():
            provider = w3.provider
            if isinstance(provider, AsyncHTTPProvider):
                await provider.disconnect()

    async def _head(self, url: str) -> tuple[int, int]:
        w3 = self._w3[url]
        async with asyncio.timeout(self.timeout):
            chain_id = await w3.eth.chain_id
            head = await w3.eth.block_number
        if self.chain_id and chain_id != self.chain_id:
            raise PolicyError(f"chain id {chain_id}, expected {self.chain_id}")
        return int(chain_id), int(head)

    async def _snapshot_at(self, url: str, chain_id: int, block: int) -> PolicySnapshot:
        w3 = self._w3[url]
        contract = w3.eth.contract(address=self.address, abi=ABI)
        async with asyncio.timeout(self.timeout):
            blk = await w3.eth.get_block(block)
            version, ids, labels = await contract.functions.snapshot().call(block_identifier=block)
        block_hash = blk.get("hash")
        if not isinstance(block_hash, bytes):
            raise PolicyError("block without a hash")
        if not (isinstance(ids, list) and isinstance(labels, list)) or len(ids) != len(labels):
            raise PolicyError("snapshot() returned mismatched lists")
        return PolicySnapshot(
            chain_id=chain_id,
            address=self.address,
            block_number=block,
            block_hash=bytes(block_hash),
            version=int(version),
            entries=tuple((bytes(i), str(lbl)) for i, lbl in zip(ids, labels, strict=True)),
            confirmed_at=time.time(),
        )

    async def read_once(self) -> tuple[VoteOutcome, list[EndpointResult]]:
        """One refresh round over every endpoint; never raises for an endpoint's failure."""
        heads = await asyncio.gather(
            *(self._guard(u, self._head(u)) for u in self.urls), return_exceptions=False
        )
        head_of: dict[str, tuple[int, int]] = {}
        errors: dict[str, str] = {}
        for url, (value, err) in zip(self.urls, heads, strict=True):
            if value is not None:
                head_of[url] = value
            else:
                errors[url] = err
        target = target_block([h for _, h in head_of.values()], self.quorum)
        if target is None:
            results = [
                EndpointResult(u, error=errors.get(u, "answered, but too few others did"))
                for u in self.urls
            ]
            outcome = vote(results, self.quorum)
            self._report(outcome)
            return outcome, results

        async def at_target(url: str) -> EndpointResult:
            if url not in head_of:
                return EndpointResult(url, error=errors.get(url, "no head"))
            chain_id, head = head_of[url]
            if head < target:
                return EndpointResult(
                    url, error=f"lagging: head {head} < block {target}", latest_block=head
                )
            snap, err = await self._guard(url, self._snapshot_at(url, chain_id, target))
            return EndpointResult(url, snapshot=snap, error=err, latest_block=head)

        results = list(await asyncio.gather(*(at_target(u) for u in self.urls)))
        outcome = vote(results, self.quorum)
        self._report(outcome)
        return outcome, results

    async def _guard(self, url: str, coro: Any) -> tuple[Any, str]:
        """Run one endpoint call; turn its failure into a reason string (logged)."""
        try:
            return await coro, ""
        except TimeoutError:
            reason = f"timed out after {self.timeout:g} s"
        except (Web3Exception, aiohttp.ClientError, OSError, PolicyError, ValueError) as e:
            reason = f"{type(e).__name__}: {e}"[:300]
        log.debug("policy endpoint %s: %s", url, reason)
        return None, reason

    def _report(self, outcome: VoteOutcome) -> None:
        for url in outcome.dissenting:
            if outcome.snapshot is not None:
                log.warning(
                    "policy endpoint %s disagrees with the quorum at block %d: outvoted",
                    url,
                    outcome.snapshot.block_number,
                )
        for url, reason in outcome.failed:
            log.warning("policy endpoint %s failed: %s", url, reason)
        if outcome.snapshot is None:
            log.warning("policy read failed: %s", outcome.reason)


# -- one-call reads for verifiers ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicyReading:
    """What :func:`check_measurement` tells a verifier: the decision and how it was reached."""

    decision: PolicyDecision
    outcome: VoteOutcome
    endpoints: tuple[EndpointResult, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


async def check_measurement(
    rpc_urls: Sequence[str],
    address: str,
    measurement_id: bytes,
    quorum: int = 1,
    *,
    rpc_timeout: float = 10.0,
    chain_id: int = 0,
) -> PolicyReading:
    """Read the policy now (k-of-n quorum) and decide whether ``measurement_id`` is allowed.

    For verifiers (``teeproxy verify --policy-rpc URL --policy-address ADDR``): a fresh read,
    so the staleness bound does not apply; without a quorum the verdict is NO_POLICY (deny).
    """
    reader = PolicyReader(rpc_urls, address, quorum, timeout=rpc_timeout, chain_id=chain_id)
    try:
        outcome, results = await reader.read_once()
    finally:
        await reader.close()
    decision = decide(outcome.snapshot, measurement_id, time.time(), max_staleness=float("inf"))
    return PolicyReading(decision, outcome, tuple(results))


async def read_snapshot(
    rpc_urls: Sequence[str],
    address: str,
    quorum: int = 1,
    *,
    rpc_timeout: float = 10.0,
    chain_id: int = 0,
) -> tuple[PolicySnapshot | None, VoteOutcome]:
    """One quorum read of the whole policy (for verifiers that judge ids later)."""
    reader = PolicyReader(rpc_urls, address, quorum, timeout=rpc_timeout, chain_id=chain_id)
    try:
        outcome, _results = await reader.read_once()
    finally:
        await reader.close()
    return outcome.snapshot, outcome


def policy_from_chain(
    rpc_urls: Sequence[str], address: str, quorum: int = 1, *, rpc_timeout: float = 10.0
) -> SnapshotPolicy:
    """Blocking helper for command-line verifiers: read the policy now (own event loop)."""
    snapshot, outcome = asyncio.run(
        read_snapshot(rpc_urls, address, quorum, rpc_timeout=rpc_timeout)
    )
    return SnapshotPolicy(snapshot, outcome.reason)
