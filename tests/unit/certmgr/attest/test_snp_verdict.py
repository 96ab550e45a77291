"""certmgr.attest.verify with SEV-SNP reports: one verdict shape, snp-* reason codes."""

from __future__ import annotations

from pathlib import Path

from certmgr.attest.snp_verify import SnpCollateral, SnpPolicy
from certmgr.attest.verify import (
    QuoteResult,
    Reason,
    VerifyOptions,
    verify_quote,
    verify_quote_verdict,
)

from .snp_helpers import (
    T_DSTACK,
    T_GOSEV,
    certs,
    dstack_collateral,
    dstack_report,
    edit,
    gosev_collateral,
    gosev_report,
    with_policy,
)

INSPECT = VerifyOptions(any_measurement=True, snp=SnpPolicy(allow_smt=True))


def _reasons(q: QuoteResult) -> list[Reason]:
    return [f.reason for f in q.failures]


TDX_QUOTE = Path(__file__).resolve().parents[3] / "data" / "dcap-qvl" / "tdx_quote"


def test_dstack_report_is_trusted_with_its_collateral() -> None:
    raw = dstack_report()
    rd = b"attest-test-fixture-2026".ljust(64, b"\x00")
    v = verify_quote_verdict(raw, dstack_collateral(), INSPECT, now=int(T_DSTACK.timestamp()))
    assert v.status == "UpToDate"
    assert v.failures == ()
    assert v.trusted
    assert v.tee == "sev-snp"
    doc = v.to_json()
    assert doc["measurement"].startswith("7f51e17f")
    assert doc["host_data"].startswith("783f0057")
    assert doc["report_data"] == rd.hex()
    assert doc["sev_snp"]["policy"] == "0x30000"
    assert doc["sev_snp"]["product"] == "Milan"


def test_go_sev_guest_report_fails_only_on_debug_and_smt() -> None:
    v = verify_quote_verdict(
        gosev_report(),
        gosev_collateral(),
        VerifyOptions(any_measurement=True),
        now=int(T_GOSEV.timestamp()),
    )
    assert v.status == "UpToDate"
    # DEBUG is reported once, by the common check; SMT by the SNP policy.
    assert sorted(v.reasons) == sorted([Reason.SNP_POLICY, Reason.DEBUG])
    assert not v.trusted


def test_without_snp_collateral_the_report_is_unverified() -> None:
    for coll in (None, SnpCollateral(), object()):
        q = verify_quote(dstack_report(), coll, int(T_DSTACK.timestamp()), INSPECT)
        assert q.status == "Unverified"
        assert [f.reason for f in q.failures] == [Reason.UNVERIFIED_TEE]


def test_snp_failures_map_to_their_reasons() -> None:
    now = int(T_DSTACK.timestamp())
    flipped = edit(dstack_report(), 0x90, b"\x00")
    assert Reason.SNP_SIGNATURE in _reasons(
        verify_quote(flipped, dstack_collateral(), now, INSPECT)
    )
    ask, ark = certs("ask_ark_genoa.pem")
    genoa = SnpCollateral(vek=dstack_collateral().vek, ask=ask, ark=ark)
    assert Reason.SNP_CHAIN in _reasons(verify_quote(dstack_report(), genoa, now, INSPECT))
    late = int(T_DSTACK.timestamp()) + 20 * 365 * 86400
    res = verify_quote(dstack_report(), dstack_collateral(), late, INSPECT)
    assert Reason.COLLATERAL_EXPIRED in _reasons(res)
    tcb = edit(dstack_report(), 0x186, b"\x18")
    assert Reason.SNP_TCB in _reasons(verify_quote(tcb, dstack_collateral(), now, INSPECT))
    debug = with_policy(dstack_report(), 0x30000 | 1 << 19)
    reasons = _reasons(verify_quote(debug, dstack_collateral(), now, INSPECT))
    assert Reason.DEBUG in reasons and Reason.SNP_POLICY not in reasons
    smt = _reasons(verify_quote(dstack_report(), dstack_collateral(), now, VerifyOptions()))
    assert smt == [Reason.SNP_POLICY]


def test_expect_tee_and_measurement_policy_still_apply() -> None:
    from certmgr.attest.measurement import TeeType

    now = int(T_DSTACK.timestamp())
    opts = VerifyOptions(expect_tee=TeeType.TDX, snp=SnpPolicy(allow_smt=True))
    v = verify_quote_verdict(dstack_report(), dstack_collateral(), opts, now=now)
    assert Reason.TEE_TYPE in v.reasons
    v = verify_quote_verdict(
        dstack_report(), dstack_collateral(), VerifyOptions(snp=SnpPolicy(allow_smt=True)), now=now
    )
    assert v.reasons == (Reason.NO_MEASUREMENT_POLICY,)


def test_an_intel_quote_with_snp_collateral_is_collateral_missing() -> None:
    q = verify_quote(TDX_QUOTE.read_bytes(), dstack_collateral(), 1750414563, VerifyOptions())
    assert [f.reason for f in q.failures] == [Reason.COLLATERAL_MISSING]
    assert q.details == {}
