"""certmgr.attest as a whole: every parser of peer-supplied bytes keeps one contract.

The parsers (one row of :data:`PARSERS` each): the RA-TLS certificate, its evidence
extension and claims buffer, the nonce evidence document, SEV-SNP reports and certificate
tables, the collateral read from such a table, and Intel quotes / SNP reports through
:func:`certmgr.attest.quote.parse_evidence`. For ANY input each returns or raises its
documented error (never another exception) within a second, and an input over its size
cap is refused by that cap, before any decoding, however large it is.

Inputs: random bytes, and mutations of real inputs (tests/helpers/fuzz.py: the Gramine,
Intel SGX SDK and rats-tls certificates, dcap-qvl quotes, go-sev-guest and dstack SNP
reports...), which get past the first checks and reach the deep ones. The module-level
hypothesis tests of each parser (next to its unit tests) stay; these are the shared
contract. The example counts keep the whole module near 5 seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from certmgr.attest.claims import MAX_CLAIMS_SIZE, parse_claims
from certmgr.attest.evidence import MAX_EVIDENCE_SIZE, parse_evidence_json
from certmgr.attest.measurement import MAX_QUOTE_SIZE
from certmgr.attest.quote import parse_evidence
from certmgr.attest.ratls import (
    MAX_CERT_SIZE,
    MAX_EXTENSION_SIZE,
    parse_certificate,
    parse_extension,
)
from certmgr.attest.sevsnp import (
    MAX_CERT_TABLE_SIZE,
    SNP_REPORT_SIZE,
    parse_cert_table,
    parse_snp_report,
)
from certmgr.attest.snp_verify import collateral_from_cert_table
from certmgr.errors import EvidenceError, QuoteError, RaTlsError, VerifyError
from tests.helpers.fuzz import Corpus, corpus, mutate, mutations, run_parser


@dataclass(frozen=True)
class Parser:
    parse: Callable[[bytes], Any]
    errors: tuple[type[Exception], ...]
    seeds: Callable[[Corpus], tuple[bytes, ...]]
    cap: int  # the largest input accepted (SNP reports: the only size accepted)
    too_large: str  # what the size refusal says
    oversize: Callable[[bytes, int], bytes]  # (a seed, a size): an input of at least that size


def _cbor_zeros(seed: bytes, n: int) -> bytes:
    """A CBOR array of ``n - 5`` zeros: long to decode, and no claims or extension."""
    return b"\x9a" + (n - 5).to_bytes(4, "big") + bytes(n - 5)


def _json_zeros(seed: bytes, n: int) -> bytes:
    """A JSON array of zeros: long to decode, and no evidence document."""
    return b"[" + b"0," * (n // 2) + b"0]"


def _ones(seed: bytes, n: int) -> bytes:
    """0x01 bytes: no certificate, quote, report or table (a decoder says so)."""
    return b"\x01" * n


PARSERS = {
    "ratls.parse_certificate": Parser(
        parse_certificate,
        (RaTlsError,),
        lambda c: c.certificates,
        MAX_CERT_SIZE,
        "too large",
        _ones,
    ),
    "ratls.parse_extension": Parser(
        parse_extension,
        (RaTlsError,),
        lambda c: c.extensions,
        MAX_EXTENSION_SIZE,
        "too large",
        _cbor_zeros,
    ),
    "claims.parse_claims": Parser(
        parse_claims, (RaTlsError,), lambda c: c.claims, MAX_CLAIMS_SIZE, "too large", _cbor_zeros
    ),
    "evidence.parse_evidence_json": Parser(
        parse_evidence_json,
        (EvidenceError,),
        lambda c: c.evidence,
        MAX_EVIDENCE_SIZE,
        "too large",
        _json_zeros,
    ),
    "sevsnp.parse_snp_report": Parser(
        parse_snp_report,
        (QuoteError,),
        lambda c: c.snp_reports,
        SNP_REPORT_SIZE,
        "must be 1184",
        _ones,
    ),
    "sevsnp.parse_cert_table": Parser(
        parse_cert_table,
        (QuoteError,),
        lambda c: c.cert_tables,
        MAX_CERT_TABLE_SIZE,
        "exceeds",
        _ones,
    ),
    "snp_verify.collateral_from_cert_table": Parser(
        collateral_from_cert_table,
        (QuoteError, VerifyError),
        lambda c: c.cert_tables,
        MAX_CERT_TABLE_SIZE,
        "exceeds",
        _ones,
    ),
    "quote.parse_evidence": Parser(
        parse_evidence, (QuoteError,), lambda c: c.quotes, MAX_QUOTE_SIZE, "too large", _ones
    ),
}
NAMES = sorted(PARSERS)
_FUZZ = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize("name", NAMES)
def test_every_real_input_parses(name: str) -> None:
    """The mutation seeds are valid: mutations start deep inside each format."""
    p = PARSERS[name]
    for seed in p.seeds(corpus()):
        assert run_parser(p.parse, seed, ()) is not None


@pytest.mark.parametrize("name", NAMES)
@settings(_FUZZ, max_examples=50)
@given(data=st.binary(max_size=2048))
def test_random_bytes(name: str, data: bytes) -> None:
    p = PARSERS[name]
    run_parser(p.parse, data, p.errors)


@pytest.mark.parametrize("name", NAMES)
@settings(_FUZZ, max_examples=120)
@given(edit=st.data())
def test_mutated_real_inputs(name: str, edit: st.DataObject) -> None:
    p = PARSERS[name]
    run_parser(p.parse, edit.draw(mutations(p.seeds(corpus()))), p.errors)


def _json_values() -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
        max_leaves=12,
    )


@settings(_FUZZ, max_examples=100)
@given(
    field=st.sampled_from(
        ["version", "quote", "claims", "endorsements", "gpu", "provider", "tee", "extra"]
    ),
    value=_json_values(),
    nested=_json_values(),
    which=st.integers(0, 1),
)
def test_evidence_fields_of_any_json_type(field: str, value: Any, nested: Any, which: int) -> None:
    doc = json.loads(corpus().evidence[which])  # which 1 carries endorsements
    doc[field] = value
    if isinstance(doc.get("endorsements"), dict):
        doc["endorsements"]["data"] = nested  # a wrong-typed nested field too
    run_parser(parse_evidence_json, json.dumps(doc).encode(), (EvidenceError,))


@pytest.mark.parametrize("name", NAMES)
def test_oversize_input_is_refused_by_its_cap_before_decoding(name: str) -> None:
    p = PARSERS[name]
    seed = p.seeds(corpus())[0]
    # Just over the cap, then 32 MiB, of bytes a decoder would refuse for another reason or
    # take long over: only a size check made first refuses them fast and for their size.
    for size in (p.cap + 1, 32 * 1024 * 1024):
        data = p.oversize(seed, size)
        assert len(data) > p.cap
        started = time.monotonic()
        with pytest.raises(p.errors, match=p.too_large):
            p.parse(data)
        assert time.monotonic() - started < 0.1, f"{name} decoded {size} bytes before refusing"


@pytest.mark.parametrize("name", NAMES)
def test_an_input_at_the_cap_is_not_refused_for_its_size(name: str) -> None:
    p = PARSERS[name]
    seed = p.seeds(corpus())[0]
    pad = p.cap - len(seed)
    data = b" " * pad + seed if name.startswith("evidence") else seed + bytes(pad)
    try:
        p.parse(data)
    except p.errors as e:
        assert p.too_large not in str(e)


def test_the_mutator_edits_and_keeps_within_bounds() -> None:
    seed = bytes(range(64))
    assert mutate(seed, []) == seed
    assert mutate(seed, [(0, 3, 1, 1, b"")]) == seed[:3] + bytes([3 ^ 2]) + seed[4:]
    assert mutate(seed, [(4, 10, 0, 1, b"")]) == seed[:10]
    assert mutate(seed, [(3, 64 + 5, 0, 1, b"xy")]) == seed[:5] + b"xy" + seed[5:]
    assert mutate(b"", [(2, 0, 0, 4, b"")]) == b"\x00"
