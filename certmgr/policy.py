"""The measurement policy as data, and the decisions over it (pure: no I/O, never awaits).

Owns:
- :class:`PolicySnapshot`: one read of the ``MeasurementPolicy`` contract
  (``contracts_abi/MeasurementPolicy.sol``) at one block: version, allowed ids and labels,
  the block it was read at, and when it was last confirmed by a quorum of RPC endpoints.
- :func:`vote`: k-of-n agreement over what several endpoints returned for the same block.
  Endpoints that answered something else are *dissenters* (lying, or on another fork or
  chain); endpoints that failed or had not reached the block are reported with the reason.
- :func:`decide`: may this measurement id serve (proxy) or be trusted (verifier) now?
  Fail closed: no snapshot, or one older than ``max_staleness`` seconds, is a denial.
- :func:`decode_revert`: a revert's return data -> the contract's custom error, by name.

The I/O side (AsyncWeb3, one or more RPC endpoints) is :mod:`certmgr.policy_rpc`;
:func:`check_measurement` below is the one-call entry point for the verifier and imports it
lazily so this module stays importable without web3.

The measurement id itself (a bytes32 over the TEE type and its launch/runtime
measurements) is defined by the attestation code (``certmgr.quote.measurement_id``).
"""

from __future__ import annotations

import contextlib
import enum
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

__all__ = [
    "MAX_LABEL_BYTES",
    "MAX_MEASUREMENTS",
    "Decision",
    "EndpointResult",
    "PolicyError",
    "PolicySnapshot",
    "PolicyVerdict",
    "SnapshotPolicy",
    "Verdict",
    "VoteOutcome",
    "check_measurement",
    "decide",
    "decode_revert",
    "eth_import_guard",
    "parse_measurement_id",
    "policy_from_chain",
    "read_snapshot",
    "vote",
]

# Mirrors of the contract's bounds: a reader refuses anything larger (a lying RPC must not
# make us allocate without limit).
MAX_MEASUREMENTS = 256
MAX_LABEL_BYTES = 64

# Computed at import: it also loads eth-hash's keccak backend (an import, i.e. file I/O) now
# rather than lazily on the first hash inside the event loop.
_ERROR_STRING = keccak(text="Error(string)")[:4]


@contextlib.contextmanager
def eth_import_guard() -> Iterator[None]:
    """Import the Ethereum stack (web3, eth-account, eth-tester) inside this.

    py_ecc and py-evm raise ``sys.setrecursionlimit`` to 100000 when first imported. That is
    process-wide: deep recursion anywhere (``json.loads`` of deeply nested input, say) then
    overflows the C stack and kills the process with SIGSEGV instead of raising
    RecursionError. The previous limit is put back; their code paths we use do not recurse
    deeply (our contract makes no external calls).
    """
    limit = sys.getrecursionlimit()
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


class PolicyError(ValueError):
    """A policy value (measurement id, snapshot, RPC answer) is malformed."""


def parse_measurement_id(text: str) -> bytes:
    """``0x`` + 64 hex digits -> 32 bytes; anything else is a PolicyError."""
    s = text.strip()
    if s.startswith(("0x", "0X")):
        s = s[2:]
    if len(s) != 64:
        raise PolicyError(f"a measurement id is 32 bytes (64 hex digits), got {len(s)} digits")
    try:
        value = bytes.fromhex(s)
    except ValueError:
        raise PolicyError("a measurement id must be hexadecimal") from None
    if value == bytes(32):
        raise PolicyError("the zero measurement id is never valid")
    return value


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    """The contract's state at one block, as agreed by a quorum of endpoints.

    ``confirmed_at`` is the local wall-clock time (Unix seconds) at which a quorum last
    returned this state; the snapshot's age is measured from it, not from the block's
    timestamp (a quiet chain mines no blocks, and its last block can be old and current).
    """

    chain_id: int
    address: str
    block_number: int
    block_hash: bytes
    version: int
    entries: tuple[tuple[bytes, str], ...]
    confirmed_at: float = 0.0

    def __post_init__(self) -> None:
        if len(self.entries) > MAX_MEASUREMENTS:
            raise PolicyError(f"policy lists {len(self.entries)} ids, more than {MAX_MEASUREMENTS}")
        for mid, label in self.entries:
            if len(mid) != 32:
                raise PolicyError(f"measurement id of {len(mid)} bytes")
            if len(label.encode()) > MAX_LABEL_BYTES:
                raise PolicyError("label longer than the contract allows")
        if len(self.block_hash) != 32:
            raise PolicyError("block hash must be 32 bytes")

    def label(self, measurement_id: bytes) -> str | None:
        """The label of an allowed id, or None when the id is not allowed."""
        for mid, label in self.entries:
            if mid == measurement_id:
                return label
        return None

    def allows(self, measurement_id: bytes) -> bool:
        return self.label(measurement_id) is not None

    def content(self) -> tuple[object, ...]:
        """What endpoints must agree on: chain, contract, block and the whole state."""
        return (
            self.chain_id,
            self.address.lower(),
            self.block_number,
            self.block_hash,
            self.version,
            self.entries,
        )

    def same_state(self, other: PolicySnapshot) -> bool:
        """Same contract state (version and list), possibly read at another block."""
        return (self.chain_id, self.address.lower(), self.version, self.entries) == (
            other.chain_id,
            other.address.lower(),
            other.version,
            other.entries,
        )


# -- quorum ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointResult:
    """What one RPC endpoint returned for the round: a snapshot, or why not."""

    url: str
    snapshot: PolicySnapshot | None = None
    error: str = ""
    latest_block: int | None = None


@dataclass(frozen=True, slots=True)
class VoteOutcome:
    """The agreed snapshot (None without a quorum) and what each other endpoint did."""

    snapshot: PolicySnapshot | None
    agreeing: tuple[str, ...]
    dissenting: tuple[str, ...]  # answered, but something else than the quorum
    failed: tuple[tuple[str, str], ...]  # (url, reason): error, lagging, unreachable
    reason: str = ""


def target_block(latest: Sequence[int], quorum: int) -> int | None:
    """The newest block that at least ``quorum`` endpoints report having.

    A lying endpoint that claims a far-future block, or a lagging one, cannot move the
    target on its own: it is the ``quorum``-th highest of the reported heads.
    """
    if quorum < 1 or len(latest) < quorum:
        return None
    return sorted(latest, reverse=True)[quorum - 1]


def vote(results: Sequence[EndpointResult], quorum: int) -> VoteOutcome:
    """k-of-n agreement: ``quorum`` endpoints must return the same snapshot content."""
    groups: dict[tuple[object, ...], list[EndpointResult]] = {}
    failed: list[tuple[str, str]] = []
    for r in results:
        if r.snapshot is None:
            failed.append((r.url, r.error or "no answer"))
            continue
        groups.setdefault(r.snapshot.content(), []).append(r)
    best: list[EndpointResult] = max(groups.values(), key=len, default=[])
    # Two different groups of quorum size (quorum <= n/2) is a split, not an agreement.
    big = [g for g in groups.values() if len(g) >= quorum]
    if len(big) == 1:
        winner = big[0]
        others = [r.url for g in groups.values() if g is not winner for r in g]
        snap = winner[0].snapshot
        return VoteOutcome(snap, tuple(r.url for r in winner), tuple(others), tuple(failed))
    reason = (
        f"conflicting answers: {len(big)} groups reach quorum {quorum}"
        if big
        else f"no quorum: best agreement {len(best)} of {len(results)}, need {quorum}"
    )
    dissent = tuple(r.url for g in groups.values() for r in g)
    return VoteOutcome(None, (), dissent, tuple(failed), reason)


# -- decisions ---------------------------------------------------------------------------------


class Verdict(enum.StrEnum):
    ALLOWED = "allowed"
    NOT_ALLOWED = "not_allowed"  # revoked or never listed
    STALE = "stale"  # the last good snapshot is older than the bound
    NO_POLICY = "no_policy"  # no snapshot was ever agreed


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str
    version: int | None = None
    block_number: int | None = None
    age: float | None = None
    label: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOWED


def decide(
    snapshot: PolicySnapshot | None,
    measurement_id: bytes,
    now: float,
    *,
    max_staleness: float,
) -> Decision:
    """May ``measurement_id`` serve / be trusted at ``now`` under ``snapshot``? Fail closed."""
    if len(measurement_id) != 32:
        raise PolicyError(f"a measurement id is 32 bytes, got {len(measurement_id)}")
    if snapshot is None:
        return Decision(Verdict.NO_POLICY, "no policy snapshot agreed by a quorum yet")
    age = max(0.0, now - snapshot.confirmed_at)
    common = {"version": snapshot.version, "block_number": snapshot.block_number, "age": age}
    if age > max_staleness:
        return Decision(
            Verdict.STALE,
            f"policy snapshot is {age:.0f} s old, more than the {max_staleness:g} s bound",
            **common,  # type: ignore[arg-type]
        )
    label = snapshot.label(measurement_id)
    if label is None:
        return Decision(
            Verdict.NOT_ALLOWED,
            f"measurement 0x{measurement_id.hex()} is not allowed by policy version "
            f"{snapshot.version}",
            **common,  # type: ignore[arg-type]
        )
    return Decision(
        Verdict.ALLOWED,
        f"allowed by policy version {snapshot.version} ({label or 'no label'})",
        label=label,
        **common,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """What :func:`check_measurement` tells a verifier: the decision and how it was reached."""

    decision: Decision
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
) -> PolicyVerdict:
    """Read the policy now (k-of-n quorum) and decide whether ``measurement_id`` is allowed.

    For verifiers (``teeproxy verify --policy-rpc URL --policy-address ADDR``): a fresh read,
    so the staleness bound does not apply; without a quorum the verdict is NO_POLICY (deny).
    """
    import time  # noqa: PLC0415

    from certmgr.policy_rpc import PolicyReader  # noqa: PLC0415 - keeps web3 out of this module

    reader = PolicyReader(rpc_urls, address, quorum, timeout=rpc_timeout, chain_id=chain_id)
    try:
        outcome, results = await reader.read_once()
    finally:
        await reader.close()
    decision = decide(outcome.snapshot, measurement_id, time.time(), max_staleness=float("inf"))
    return PolicyVerdict(decision, outcome, tuple(results))


async def read_snapshot(
    rpc_urls: Sequence[str],
    address: str,
    quorum: int = 1,
    *,
    rpc_timeout: float = 10.0,
    chain_id: int = 0,
) -> tuple[PolicySnapshot | None, VoteOutcome]:
    """One quorum read of the whole policy (for verifiers that judge ids later)."""
    from certmgr.policy_rpc import PolicyReader  # noqa: PLC0415 - keeps web3 out of this module

    reader = PolicyReader(rpc_urls, address, quorum, timeout=rpc_timeout, chain_id=chain_id)
    try:
        outcome, _results = await reader.read_once()
    finally:
        await reader.close()
    return outcome.snapshot, outcome


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """A verifier policy check (``certmgr.verify.PolicyCheck``) answering from one snapshot.

    Built by :func:`policy_from_chain` before a connection; a missing snapshot (no quorum)
    denies every measurement with the reason.
    """

    snapshot: PolicySnapshot | None
    reason: str = ""

    def __call__(self, mid: bytes, measurement: object) -> Any:
        from certmgr.verify import PolicyDecision  # noqa: PLC0415 - verify imports us lazily

        if self.snapshot is None:
            return PolicyDecision(False, f"on-chain policy unavailable: {self.reason}")
        d = decide(self.snapshot, mid, self.snapshot.confirmed_at, max_staleness=float("inf"))
        return PolicyDecision(d.allowed, f"on-chain policy: {d.reason}")


def policy_from_chain(
    rpc_urls: Sequence[str], address: str, quorum: int = 1, *, rpc_timeout: float = 10.0
) -> SnapshotPolicy:
    """Blocking helper for command-line verifiers: read the policy now (own event loop)."""
    import asyncio  # noqa: PLC0415

    snapshot, outcome = asyncio.run(
        read_snapshot(rpc_urls, address, quorum, rpc_timeout=rpc_timeout)
    )
    return SnapshotPolicy(snapshot, outcome.reason)


# -- custom errors -----------------------------------------------------------------------------


def _error_table(abi: Sequence[dict[str, object]]) -> dict[bytes, tuple[str, list[str]]]:
    table: dict[bytes, tuple[str, list[str]]] = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        name = str(item["name"])
        inputs = item.get("inputs") or []
        if not isinstance(inputs, list):
            continue
        types = [str(i["type"]) for i in inputs]
        selector = keccak(text=f"{name}({','.join(types)})")[:4]
        table[selector] = (name, types)
    return table


def decode_revert(data: bytes, abi: Sequence[dict[str, object]] | None = None) -> str:
    """Revert return data -> ``Name(arg, ...)`` for the contract's custom errors.

    Unknown selectors and ``Error(string)`` are rendered too; never raises on bad input.
    """
    if abi is None:
        from certmgr.policy_contract import ABI  # noqa: PLC0415

        abi = ABI
    if len(data) < 4:
        return "revert without reason" if not data else f"revert data 0x{data.hex()}"
    selector, args = data[:4], data[4:]
    if selector == _ERROR_STRING:
        try:
            (msg,) = abi_decode(["string"], args)
        except (DecodingError, ValueError, TypeError) as e:
            return f"Error(<undecodable: {e}>)"
        return f"Error({msg!r})"
    entry = _error_table(abi).get(selector)
    if entry is None:
        return f"unknown error 0x{data[:4].hex()} (data 0x{data.hex()})"
    name, types = entry
    try:
        values = abi_decode(types, args)
    except (DecodingError, ValueError, TypeError) as e:
        return f"{name}(<undecodable: {e}>)"
    shown = [
        f"0x{v.hex()}"
        if isinstance(v, bytes)
        else to_checksum_address(v)
        if t == "address"
        else str(v)
        for t, v in zip(types, values, strict=True)
    ]
    return f"{name}({', '.join(shown)})"
