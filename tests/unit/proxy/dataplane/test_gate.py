"""proxy.dataplane.gate: the worker's gate reads the published state and fails
closed on a missing, unreadable or stale one."""

from __future__ import annotations

from pathlib import Path

from certmgr.policy.model import PolicyStatus
from proxy.config import loads
from proxy.control.governance import next_gate
from proxy.dataplane.gate import WorkerGate
from tests.helpers.governance import ADDR, ENFORCE, MID, decision


def _gate(tmp_path: Path) -> WorkerGate:
    cfg = loads(
        f"state_dir = '{tmp_path}'\n[governance]\nmode = 'enforce'\n"
        f"rpc_urls = ['http://127.0.0.1:1']\ncontract = '{ADDR}'\nself_measurement = 'dev'\n"
        "refresh_period = 1.0\nmax_staleness = 10.0\n"
    )
    gate = WorkerGate.for_config(cfg)
    assert gate is not None
    return gate


def test_worker_gate_fails_closed_on_missing_bad_or_old_state(tmp_path: Path) -> None:
    gate = _gate(tmp_path)
    assert gate.read(100.0) == "no governance state published"
    gate.path.parent.mkdir(parents=True)
    gate.path.write_bytes(b"{not json")
    assert gate.read(100.0) == "governance state unreadable"
    ok = next_gate(ENFORCE, decision(PolicyStatus.ALLOWED), None, MID, 100.0)
    gate.path.write_bytes(ok.to_json())
    assert gate.read(105.0) is None
    # Not renewed for max_staleness + 2 refresh periods: the supervisor stopped; fail closed.
    assert "not renewed" in (gate.read(112.5) or "")
    revoked = next_gate(ENFORCE, decision(PolicyStatus.NOT_ALLOWED), ok, MID, 100.0)
    gate.path.write_bytes(revoked.to_json())
    assert gate.read(100.0) == "because not_allowed"


def test_worker_gate_is_only_for_enforce(tmp_path: Path) -> None:
    cfg = loads(f"state_dir = '{tmp_path}'")
    assert WorkerGate.for_config(cfg) is None
