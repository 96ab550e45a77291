"""certmgr.attest.quote: parse_evidence on random and mutated quotes raises only
QuoteError, and what it accepts has a measurement id."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.measurement import measurement_id
from certmgr.attest.quote import parse_evidence
from certmgr.errors import QuoteError
from tests.helpers.attest import vector


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data: bytes) -> None:
    with contextlib.suppress(QuoteError):
        parse_evidence(data)


_SEEDS = [vector("tdx_quote"), vector("sgx_quote"), vector("tdx_quote_outdated")]


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 5005), st.integers(0, 255)), max_size=8),
    st.integers(0, 5006),
)
def test_fuzz_mutated_vectors(seed: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(seed)
    for pos, val in flips:
        if pos < len(b):
            b[pos] = val
    try:
        q = parse_evidence(bytes(b[:cut]))
    except QuoteError:
        return
    assert len(q.report_data) == 64
    measurement_id(q.measurement)
