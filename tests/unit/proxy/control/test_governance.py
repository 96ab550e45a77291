"""proxy.control.governance: the governed measurement id and the gate's transitions
(pure): enforce serves only while allowed, monitor never stops, resume or latch after a
revocation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from certmgr.keys import InsecureDevSealer
from certmgr.policy.model import PolicyStatus
from proxy.config import loads
from proxy.control.governance import DEV_MEASUREMENT_ID, governed_measurement_id, next_gate
from proxy.errors import GovernanceError
from proxy.runtime import Runtime, build_runtime
from tests.helpers.governance import ENFORCE, MID, decision

NO_TEE = Runtime(InsecureDevSealer())


def test_self_measurement_sources() -> None:
    dev = dataclasses.replace(ENFORCE, self_measurement="dev")
    assert governed_measurement_id(dev, NO_TEE) == DEV_MEASUREMENT_ID
    hexed = dataclasses.replace(ENFORCE, self_measurement="0x" + "cd" * 32)
    assert governed_measurement_id(hexed, NO_TEE) == b"\xcd" * 32
    auto = dataclasses.replace(ENFORCE, self_measurement="auto")
    attested = Runtime(InsecureDevSealer(), measurement_id=b"\x07" * 32)
    assert governed_measurement_id(auto, attested) == b"\x07" * 32


def test_auto_outside_a_tee_fails_closed(tmp_path: Path) -> None:
    """No attestation provider -> GovernanceError (the supervisor exits 3), never a default."""
    cfg = loads(f'state_dir = "{tmp_path}"\n[attestation]\nprovider = "auto"\n')
    runtime = build_runtime(cfg, prepare=True)  # no TEE interface on this machine
    assert runtime.provider is None and runtime.measurement_id is None
    with pytest.raises(GovernanceError, match="measurement id"):
        governed_measurement_id(dataclasses.replace(ENFORCE, self_measurement="auto"), runtime)


def test_enforce_serves_only_when_allowed() -> None:
    s = next_gate(ENFORCE, decision(PolicyStatus.ALLOWED), None, MID, 100.0)
    assert s.serving and s.verdict == "allowed" and s.confirmed_at == 98.0
    for v in (PolicyStatus.NOT_ALLOWED, PolicyStatus.STALE, PolicyStatus.NO_POLICY):
        s = next_gate(ENFORCE, decision(v), s, MID, 101.0)
        assert not s.serving and s.reason == f"because {v}"


def test_monitor_never_stops_serving() -> None:
    g = dataclasses.replace(ENFORCE, mode="monitor")
    s = next_gate(g, decision(PolicyStatus.NOT_ALLOWED), None, MID, 1.0)
    assert s.serving and s.verdict == "not_allowed"


def test_resume_or_latch_after_a_revocation() -> None:
    serving = next_gate(ENFORCE, decision(PolicyStatus.ALLOWED), None, MID, 1.0)
    revoked = next_gate(ENFORCE, decision(PolicyStatus.NOT_ALLOWED), serving, MID, 2.0)
    assert next_gate(ENFORCE, decision(PolicyStatus.ALLOWED), revoked, MID, 3.0).serving
    latch = dataclasses.replace(ENFORCE, resume_when_allowed=False)
    revoked = next_gate(latch, decision(PolicyStatus.NOT_ALLOWED), serving, MID, 2.0)
    assert revoked.latched
    again = next_gate(latch, decision(PolicyStatus.ALLOWED), revoked, MID, 3.0)
    assert not again.serving and "restart" in again.reason
    # Never allowed yet (start): waiting for the first "allowed" does not latch.
    first = next_gate(latch, decision(PolicyStatus.NO_POLICY), None, MID, 1.0)
    assert next_gate(latch, decision(PolicyStatus.ALLOWED), first, MID, 2.0).serving


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
