"""[governance] config rules, the published gate state and its transitions (pure)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from certmgr.keys import InsecureDevSealer
from certmgr.policy.model import PolicyDecision, PolicyStatus
from proxy.config import GovernanceConfig, loads, validate_governance
from proxy.control.governance import DEV_MEASUREMENT_ID, governed_measurement_id, next_gate
from proxy.dataplane.gate import WorkerGate
from proxy.errors import ConfigError, GovernanceError
from proxy.gatestate import GateState
from proxy.runtime import Runtime, build_runtime

ADDR = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
MID = b"\x01" * 32
OK = GovernanceConfig(
    mode="enforce", rpc_urls=("http://127.0.0.1:8545",), contract=ADDR, self_measurement="dev"
)


def test_default_config_has_governance_off() -> None:
    cfg = loads("")
    assert cfg.governance.mode == "off"
    assert cfg.governance.refresh_period == 15.0
    assert cfg.governance.max_staleness == 120.0


def test_loads_governance_section() -> None:
    cfg = loads(
        "[governance]\nmode = 'monitor'\n"
        f"rpc_urls = ['http://127.0.0.1:1', 'http://127.0.0.1:2']\nquorum = 2\ncontract = '{ADDR}'"
    )
    assert cfg.governance.rpc_urls == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert cfg.governance.quorum == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "enforcing"}, "governance.mode"),
        ({"rpc_urls": ()}, "governance.rpc_urls"),
        ({"rpc_urls": ("ftp://x",)}, "governance.rpc_urls[0]"),
        ({"rpc_urls": ("http://a", "http://a")}, "governance.rpc_urls"),
        ({"contract": "0x1234"}, "governance.contract"),
        ({"quorum": 2}, "governance.quorum"),
        ({"quorum": 0}, "governance.quorum"),
        ({"refresh_period": 0.0}, "governance.refresh_period"),
        ({"max_staleness": 1.0, "refresh_period": 5.0}, "governance.max_staleness"),
        ({"rpc_timeout": float("inf")}, "governance.rpc_timeout"),
        ({"rpc_timeout": 61.0}, "governance.rpc_timeout"),
        ({"self_measurement": "0x12"}, "governance.self_measurement"),
        ({"embedded_chain": True}, "governance.rpc_urls"),
        (
            {"embedded_chain": True, "rpc_urls": (), "embedded_chain_listen": "0.0.0.0:8546"},
            "governance.embedded_chain_listen",
        ),
    ],
)
def test_invalid_governance_names_the_field(change: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_governance(dataclasses.replace(OK, **change))  # type: ignore[arg-type]
    assert info.value.field == field


def test_valid_variants() -> None:
    validate_governance(OK)
    validate_governance(dataclasses.replace(OK, embedded_chain=True, rpc_urls=(), contract=""))
    validate_governance(dataclasses.replace(OK, self_measurement="0x" + "ab" * 32))
    validate_governance(GovernanceConfig())  # off: nothing else is checked


NO_TEE = Runtime(InsecureDevSealer())


def test_self_measurement_sources() -> None:
    dev = dataclasses.replace(OK, self_measurement="dev")
    assert governed_measurement_id(dev, NO_TEE) == DEV_MEASUREMENT_ID
    hexed = dataclasses.replace(OK, self_measurement="0x" + "cd" * 32)
    assert governed_measurement_id(hexed, NO_TEE) == b"\xcd" * 32
    auto = dataclasses.replace(OK, self_measurement="auto")
    attested = Runtime(InsecureDevSealer(), measurement_id=b"\x07" * 32)
    assert governed_measurement_id(auto, attested) == b"\x07" * 32


def test_auto_outside_a_tee_fails_closed(tmp_path: Path) -> None:
    """No attestation provider -> GovernanceError (the supervisor exits 3), never a default."""
    cfg = loads(f'state_dir = "{tmp_path}"\n[attestation]\nprovider = "auto"\n')
    runtime = build_runtime(cfg, prepare=True)  # no TEE interface on this machine
    assert runtime.provider is None and runtime.measurement_id is None
    with pytest.raises(GovernanceError, match="measurement id"):
        governed_measurement_id(dataclasses.replace(OK, self_measurement="auto"), runtime)


def decision(verdict: PolicyStatus, version: int = 3) -> PolicyDecision:
    return PolicyDecision(verdict, f"because {verdict}", version=version, block_number=9, age=2.0)


def test_enforce_serves_only_when_allowed() -> None:
    s = next_gate(OK, decision(PolicyStatus.ALLOWED), None, MID, 100.0)
    assert s.serving and s.verdict == "allowed" and s.confirmed_at == 98.0
    for v in (PolicyStatus.NOT_ALLOWED, PolicyStatus.STALE, PolicyStatus.NO_POLICY):
        s = next_gate(OK, decision(v), s, MID, 101.0)
        assert not s.serving and s.reason == f"because {v}"


def test_monitor_never_stops_serving() -> None:
    g = dataclasses.replace(OK, mode="monitor")
    s = next_gate(g, decision(PolicyStatus.NOT_ALLOWED), None, MID, 1.0)
    assert s.serving and s.verdict == "not_allowed"


def test_resume_or_latch_after_a_revocation() -> None:
    serving = next_gate(OK, decision(PolicyStatus.ALLOWED), None, MID, 1.0)
    revoked = next_gate(OK, decision(PolicyStatus.NOT_ALLOWED), serving, MID, 2.0)
    assert next_gate(OK, decision(PolicyStatus.ALLOWED), revoked, MID, 3.0).serving
    latch = dataclasses.replace(OK, resume_when_allowed=False)
    revoked = next_gate(latch, decision(PolicyStatus.NOT_ALLOWED), serving, MID, 2.0)
    assert revoked.latched
    again = next_gate(latch, decision(PolicyStatus.ALLOWED), revoked, MID, 3.0)
    assert not again.serving and "restart" in again.reason
    # Never allowed yet (start): waiting for the first "allowed" does not latch.
    first = next_gate(latch, decision(PolicyStatus.NO_POLICY), None, MID, 1.0)
    assert next_gate(latch, decision(PolicyStatus.ALLOWED), first, MID, 2.0).serving


def test_gate_state_round_trip_and_bounds() -> None:
    s = next_gate(OK, decision(PolicyStatus.ALLOWED), None, MID, 5.0)
    assert GateState.from_json(s.to_json()) == s
    with pytest.raises(ValueError, match="too large"):
        GateState.from_json(b" " * (64 * 1024 + 1))
    with pytest.raises(ValueError, match="wrong types"):
        GateState.from_json(json.dumps({**json.loads(s.to_json()), "serving": "yes"}).encode())
    with pytest.raises(ValueError, match="not an object"):
        GateState.from_json(b"[]")


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
    ok = next_gate(OK, decision(PolicyStatus.ALLOWED), None, MID, 100.0)
    gate.path.write_bytes(ok.to_json())
    assert gate.read(105.0) is None
    # Not renewed for max_staleness + 2 refresh periods: the supervisor stopped; fail closed.
    assert "not renewed" in (gate.read(112.5) or "")
    revoked = next_gate(OK, decision(PolicyStatus.NOT_ALLOWED), ok, MID, 100.0)
    gate.path.write_bytes(revoked.to_json())
    assert gate.read(100.0) == "because not_allowed"


def test_worker_gate_is_only_for_enforce(tmp_path: Path) -> None:
    cfg = loads(f"state_dir = '{tmp_path}'")
    assert WorkerGate.for_config(cfg) is None


def test_auto_names_the_same_measurement_as_the_served_ratls_certificate(
    tmp_path: Path,
) -> None:
    """Governance's own id and the id a verifier derives from the RA-TLS cert must agree."""
    from certmgr.attest.measurement import measurement_id
    from certmgr.attest.quote import parse_evidence
    from certmgr.attest.ratls import parse_certificate
    from certmgr.attest.ratls_store import ratls_dir
    from proxy.config import loads
    from proxy.control.attestation import prepare_attestation

    cfg = loads(
        f'state_dir = "{tmp_path}"\n[attestation]\nprovider = "simulated"\n'
        '[governance]\nmode = "monitor"\nself_measurement = "auto"\nembedded_chain = true\n'
    )
    runtime = build_runtime(cfg, prepare=True)
    governed = governed_measurement_id(cfg.governance, runtime)
    prepare_attestation(cfg, runtime)
    pem = ratls_dir(tmp_path) / "ratls.pem"
    served = parse_certificate(pem.read_bytes())
    assert governed == measurement_id(parse_evidence(served.quote).measurement)
    assert governed != DEV_MEASUREMENT_ID
