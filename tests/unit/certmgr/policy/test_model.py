"""certmgr.policy.model: pure policy decisions: snapshot bounds, k-of-n voting,
fail-closed decide."""

from __future__ import annotations

import pytest

from certmgr.errors import PolicyError
from certmgr.policy.model import (
    MAX_MEASUREMENTS,
    EndpointResult,
    PolicySnapshot,
    PolicyStatus,
    decide,
    parse_measurement_id,
    target_block,
    vote,
)

MINE = b"\x01" * 32


OTHER = b"\x02" * 32


ADDR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def snap(
    entries: tuple[tuple[bytes, str], ...] = ((MINE, "v1"),),
    *,
    version: int = 1,
    block: int = 10,
    block_hash: bytes = b"\xaa" * 32,
    confirmed_at: float = 1000.0,
    chain_id: int = 1,
) -> PolicySnapshot:
    return PolicySnapshot(chain_id, ADDR, block, block_hash, version, entries, confirmed_at)


# -- snapshot ----------------------------------------------------------------------------------


def test_snapshot_bounds_what_an_endpoint_may_return() -> None:
    too_many = tuple((i.to_bytes(32, "big"), "") for i in range(1, MAX_MEASUREMENTS + 2))
    with pytest.raises(PolicyError, match="more than"):
        snap(too_many)
    with pytest.raises(PolicyError, match="31 bytes"):
        snap(((b"\x01" * 31, ""),))
    with pytest.raises(PolicyError, match="label"):
        snap(((MINE, "x" * 65),))
    with pytest.raises(PolicyError, match="block hash"):
        snap(block_hash=b"\x00")
    assert snap(((MINE, "x" * 64),)).label(MINE) == "x" * 64


def test_parse_measurement_id() -> None:
    assert parse_measurement_id("0x" + "ab" * 32) == b"\xab" * 32
    assert parse_measurement_id("AB" * 32) == b"\xab" * 32
    for bad in ("0x" + "ab" * 31, "zz" * 32, "0x" + "00" * 32, ""):
        with pytest.raises(PolicyError):
            parse_measurement_id(bad)


# -- quorum ------------------------------------------------------------------------------------


def test_target_block_ignores_one_outlier_head() -> None:
    assert target_block([100, 101, 10**9], 2) == 101  # a liar's far-future head
    assert target_block([100, 101, 3], 2) == 100  # a lagging endpoint
    assert target_block([100], 2) is None
    assert target_block([5, 7], 1) == 7


def test_two_agreeing_outvote_one_liar() -> None:
    good = snap()
    forged = snap(((OTHER, "forged"),), version=999)
    out = vote(
        [
            EndpointResult("a", good),
            EndpointResult("liar", forged),
            EndpointResult("b", good),
        ],
        quorum=2,
    )
    assert out.snapshot == good
    assert out.agreeing == ("a", "b")
    assert out.dissenting == ("liar",)


def test_no_quorum_means_no_snapshot() -> None:
    out = vote(
        [
            EndpointResult("a", snap()),
            EndpointResult("b", snap(version=2)),
            EndpointResult("c", error="timed out"),
        ],
        quorum=2,
    )
    assert out.snapshot is None
    assert "no quorum" in out.reason
    assert out.failed == (("c", "timed out"),)


def test_same_list_at_another_block_is_not_agreement() -> None:
    """k endpoints must agree on the same block (and its hash), not only on the list."""
    out = vote([EndpointResult("a", snap(block=10)), EndpointResult("b", snap(block=11))], quorum=2)
    assert out.snapshot is None
    fork = vote(
        [
            EndpointResult("a", snap(block_hash=b"\x01" * 32)),
            EndpointResult("b", snap(block_hash=b"\x02" * 32)),
        ],
        quorum=2,
    )
    assert fork.snapshot is None


def test_split_vote_with_low_quorum_is_refused() -> None:
    out = vote([EndpointResult("a", snap()), EndpointResult("b", snap(version=5))], quorum=1)
    assert out.snapshot is None
    assert "conflicting" in out.reason


# -- decide ------------------------------------------------------------------------------------


def test_decide_allowed_and_revoked() -> None:
    d = decide(snap(), MINE, 1010.0, max_staleness=60)
    assert d.verdict is PolicyStatus.ALLOWED and d.allowed
    assert d.label == "v1"
    assert d.age == 10.0
    d = decide(snap(((OTHER, ""),), version=2), MINE, 1010.0, max_staleness=60)
    assert d.verdict is PolicyStatus.NOT_ALLOWED and not d.allowed
    assert "version 2" in d.reason


def test_decide_fails_closed_without_or_with_old_policy() -> None:
    assert decide(None, MINE, 0.0, max_staleness=60).verdict is PolicyStatus.NO_POLICY
    stale = decide(snap(confirmed_at=1000.0), MINE, 1060.5, max_staleness=60)
    assert stale.verdict is PolicyStatus.STALE and not stale.allowed
    assert decide(snap(confirmed_at=1000.0), MINE, 1060.0, max_staleness=60).allowed
    with pytest.raises(PolicyError):
        decide(snap(), b"\x01", 0.0, max_staleness=60)
