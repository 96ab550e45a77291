"""proxy.gatestate: the published gate state round-trips and is bounded."""

from __future__ import annotations

import json

import pytest

from certmgr.policy.model import PolicyStatus
from proxy.control.governance import next_gate
from proxy.gatestate import GateState
from tests.helpers.governance import ENFORCE, MID, decision


def test_gate_state_round_trip_and_bounds() -> None:
    s = next_gate(ENFORCE, decision(PolicyStatus.ALLOWED), None, MID, 5.0)
    assert GateState.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="too large"):
        GateState.from_json(b" " * (64 * 1024 + 1))
    with pytest.raises(ValueError, match="wrong types"):
        GateState.from_json(json.dumps({**json.loads(s.to_json()), "serving": "yes"}).encode())
    with pytest.raises(ValueError, match="not an object"):
        GateState.from_json(b"[]")
