"""certmgr.attest.evidence: the evidence document parser on arbitrary input, and the
claims encoder's check of the signing address."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.evidence import encode_evidence_claims, parse_evidence_json
from certmgr.errors import EvidenceError


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda q, c, v: json.dumps({"version": v, "quote": q, "claims": c}).encode(),
            st.text(max_size=40),
            st.one_of(st.text(max_size=40), st.binary(max_size=60).map(_b64)),
            st.one_of(st.just(1), st.integers(), st.text(max_size=3)),
        ),
    )
)
def test_fuzz_evidence_parser(body: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        parse_evidence_json(body)


def test_evidence_encoder_refuses_a_malformed_address() -> None:
    with pytest.raises(EvidenceError):
        encode_evidence_claims(b"n" * 16, b"\x07" * 32, 1, signing_address="0x" + "AB" * 20)
