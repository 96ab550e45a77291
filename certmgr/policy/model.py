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
- :class:`SnapshotPolicy`: the verifier's question "may this measurement id be trusted?"
  (:class:`certmgr.attest.policycheck.PolicyCheck`) answered from one snapshot (allowlist
  files: :mod:`certmgr.policy.allowlist`).

The I/O side (AsyncWeb3, one or more RPC endpoints) is :mod:`certmgr.policy.rpc`. The
measurement id itself (a bytes32 over the TEE type and its launch/runtime measurements) is
defined by :func:`certmgr.attest.measurement.measurement_id`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from certmgr.attest.measurement import Measurement
from certmgr.attest.policycheck import CheckResult
from certmgr.errors import PolicyError

__all__ = [
    "MAX_LABEL_BYTES",
    "MAX_MEASUREMENTS",
    "EndpointResult",
    "PolicyDecision",
    "PolicySnapshot",
    "PolicyStatus",
    "SnapshotPolicy",
    "VoteOutcome",
    "decide",
    "parse_measurement_id",
    "target_block",
    "vote",
]

# Mirrors of the contract's bounds: a reader refuses anything larger (a lying RPC must not
# make us allocate without limit).
MAX_MEASUREMENTS = 256
MAX_LABEL_BYTES = 64


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


class PolicyStatus(enum.StrEnum):
    """Where a measurement stands under the policy now."""

    ALLOWED = "allowed"
    NOT_ALLOWED = "not_allowed"  # revoked or never listed
    STALE = "stale"  # the last good snapshot is older than the bound
    NO_POLICY = "no_policy"  # no snapshot was ever agreed


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """The outcome of :func:`decide`, with what it was decided on."""

    verdict: PolicyStatus
    reason: str
    version: int | None = None
    block_number: int | None = None
    age: float | None = None
    label: str | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is PolicyStatus.ALLOWED


def decide(
    snapshot: PolicySnapshot | None,
    measurement_id: bytes,
    now: float,
    *,
    max_staleness: float,
) -> PolicyDecision:
    """May ``measurement_id`` serve / be trusted at ``now`` under ``snapshot``? Fail closed."""
    if len(measurement_id) != 32:
        raise PolicyError(f"a measurement id is 32 bytes, got {len(measurement_id)}")
    if snapshot is None:
        return PolicyDecision(PolicyStatus.NO_POLICY, "no policy snapshot agreed by a quorum yet")
    age = max(0.0, now - snapshot.confirmed_at)
    common = {"version": snapshot.version, "block_number": snapshot.block_number, "age": age}
    if age > max_staleness:
        return PolicyDecision(
            PolicyStatus.STALE,
            f"policy snapshot is {age:.0f} s old, more than the {max_staleness:g} s bound",
            **common,  # type: ignore[arg-type]
        )
    label = snapshot.label(measurement_id)
    if label is None:
        return PolicyDecision(
            PolicyStatus.NOT_ALLOWED,
            f"measurement 0x{measurement_id.hex()} is not allowed by policy version "
            f"{snapshot.version}",
            **common,  # type: ignore[arg-type]
        )
    return PolicyDecision(
        PolicyStatus.ALLOWED,
        f"allowed by policy version {snapshot.version} ({label or 'no label'})",
        label=label,
        **common,  # type: ignore[arg-type]
    )


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """A verifier policy check (a :class:`certmgr.attest.policycheck.PolicyCheck`)
    answering from one snapshot.

    Built by :func:`certmgr.policy.rpc.policy_from_chain` before a connection; a missing
    snapshot (no quorum) denies every measurement with the reason.
    """

    snapshot: PolicySnapshot | None
    reason: str = ""

    def __call__(self, mid: bytes, measurement: Measurement) -> CheckResult:
        if self.snapshot is None:
            return CheckResult(False, f"on-chain policy unavailable: {self.reason}")
        d = decide(self.snapshot, mid, self.snapshot.confirmed_at, max_staleness=float("inf"))
        return CheckResult(d.allowed, f"on-chain policy: {d.reason}")
