"""proxy.control.cluster: what a member checks a newcomer with.

A newcomer's Intel quote is judged with the collateral this proxy is configured with for
its own certificate (attestation.collateral_file here, the real dcap-qvl collateral): the
real TDX quote then fails on its collateral's age (it expired in 2025) and on the binding,
never for lack of collateral; with no source configured it is ``collateral-missing``.
"""

from __future__ import annotations

import json
from pathlib import Path

from certmgr.attest.evidence import build_evidence, encode_evidence_claims
from certmgr.attest.verify import Reason, VerifyOptions, verify_evidence
from proxy.control.attestation import collateral_source
from proxy.control.cluster import ClusterMember
from tests.helpers.attest import DATA, vector
from tests.helpers.simulated_tee import simulated_config


def _member(tmp_path: Path, extra: str) -> ClusterMember:
    member = ClusterMember.__new__(ClusterMember)  # only the collateral source is used
    member._collateral = collateral_source(simulated_config(tmp_path, extra))
    return member


def _evidence() -> bytes:
    claims = encode_evidence_claims(b"n" * 32, bytes(32), 1_700_000_000)
    doc = build_evidence(vector("tdx_quote"), claims, tee="tdx", provider="configfs-tsm")
    return json.dumps(doc).encode()


def test_a_newcomers_intel_quote_is_verified_with_the_configured_collateral(
    tmp_path: Path,
) -> None:
    evidence = _evidence()
    configured = _member(tmp_path, f'collateral_file = "{DATA / "tdx_quote_collateral.json"}"')
    collateral = configured._intel_collateral(evidence)
    assert collateral is not None
    v = verify_evidence(evidence, b"n" * 32, bytes(32), collateral, VerifyOptions())
    assert Reason.COLLATERAL_EXPIRED in v.reasons
    assert Reason.COLLATERAL_MISSING not in v.reasons
    bare = _member(tmp_path / "bare", "")
    assert bare._intel_collateral(evidence) is None
    v = verify_evidence(evidence, b"n" * 32, bytes(32), None, VerifyOptions())
    assert Reason.COLLATERAL_MISSING in v.reasons


def test_no_collateral_for_a_simulated_or_malformed_newcomer(tmp_path: Path) -> None:
    configured = _member(tmp_path, f'collateral_file = "{DATA / "tdx_quote_collateral.json"}"')
    assert configured._intel_collateral(b"{not json") is None
