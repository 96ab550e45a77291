"""certmgr.attest.simulated: a simulated quote has the TDX v4 quote layout."""

from __future__ import annotations

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import TeeType
from certmgr.attest.simulated import build_simulated_quote
from tests.helpers.attest import DEV_KEY


def test_simulated_quote_has_tdx_v4_layout() -> None:
    rd = bytes(range(64))
    q = parse_quote(build_simulated_quote(DEV_KEY, rd, debug=True))
    assert (q.tee, q.version, q.report_data) == (TeeType.TDX, 4, rd)
    assert q.simulated
    assert q.measurement.debug
    assert len(q.signed) == 48 + 584
