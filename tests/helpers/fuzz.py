"""Fuzzing material for the attestation parsers: a corpus of real inputs and their mutations.

:func:`corpus` gathers, once, real inputs of every format certmgr.attest parses from
untrusted peers: the Gramine, Intel SGX SDK and rats-tls RA-TLS certificates
(tests/data/ratls), one of ours, their evidence extensions and claims buffers, the dcap-qvl
SGX / TDX quotes, the SEV-SNP reports of go-sev-guest and dstack, SEV-SNP certificate
tables (DER and PEM entries) and nonce evidence documents. :func:`mutations` is a hypothesis
strategy that edits one of them a few times (bit flips, byte stores, deletions, insertions,
duplicated slices, truncation, random tails), so that most examples get past the first
checks of a parser and reach the deeper ones. :func:`run_parser` calls a parser and
enforces the contract: it returns or raises one of its documented errors, within a time
bound.
"""

from __future__ import annotations

import base64
import functools
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from hypothesis import strategies as st

from certmgr.attest.claims import encode_claims
from certmgr.attest.evidence import build_evidence, encode_evidence_claims
from certmgr.attest.ratls import parse_certificate
from certmgr.attest.sevsnp import (
    ARK_GUID,
    ASK_GUID,
    VCEK_GUID,
    CertTableEntry,
    build_cert_table,
)
from tests.helpers import ccc_checker
from tests.helpers.attest import make_ratls, spki, vector
from tests.helpers.snp import certs, dstack_report, gosev_report

RATLS_DATA = Path(__file__).resolve().parents[1] / "data" / "ratls"
CALL_LIMIT = 1.0
"""Seconds one parser call may take on any input (they take well under 10 ms)."""


@dataclass(frozen=True, slots=True)
class Corpus:
    certificates: tuple[bytes, ...]  # DER and PEM
    extensions: tuple[bytes, ...]  # 2.23.133.5.4.9 values
    claims: tuple[bytes, ...]
    quotes: tuple[bytes, ...]  # Intel quotes and SEV-SNP reports
    snp_reports: tuple[bytes, ...]
    cert_tables: tuple[bytes, ...]
    evidence: tuple[bytes, ...]  # JSON documents


def _pem_to_der(pem: bytes) -> bytes:
    body = pem.decode("ascii").split("-----")[2]
    return base64.b64decode("".join(body.split()))


def _evidence_value(der: bytes) -> bytes | None:
    cert, _ = ccc_checker.read_tlv(der, 0)
    tbs = ccc_checker.children(cert.value)[0]
    (wrapper,) = [f for f in ccc_checker.children(tbs.value) if f.tag == 0xA3]
    for ext in ccc_checker.children(ccc_checker.children(wrapper.value)[0].value):
        items = ccc_checker.children(ext.value)
        if items[0].value == ccc_checker.EVIDENCE_OID:
            return items[-1].value
    return None  # another format (legacy, dstack)


@functools.cache
def corpus() -> Corpus:
    pems = [p.read_bytes() for p in sorted(RATLS_DATA.glob("*/*.pem"))]
    ours, key = make_ratls(extra={"hostname": "attest.test", "not-before": 1, "iat": 2})
    ders = [*(_pem_to_der(p) for p in pems), ours]
    parsed = [parse_certificate(d) for d in ders]
    evidence_claims = encode_evidence_claims(
        b"n" * 32,
        parsed[-1].spki_sha256,
        1_700_000_000,
        acme_account="https://ca.test/acct/1",
        acme_keys=[b"\x01" * 32],
        signing_address="0x" + "ab" * 20,
    )
    claims = (
        *(c.claims_bytes for c in parsed if c.claims_bytes),
        evidence_claims,
        encode_claims(spki(key)),
    )

    vcek = certs("dstack_sev_snp_vcek.pem")[0]
    ask = certs("dstack_sev_snp_ask.pem")[0]
    ark = certs("ask_ark_milan.pem")[-1]
    der_table = build_cert_table(
        [
            CertTableEntry(VCEK_GUID, vcek),
            CertTableEntry(ASK_GUID, ask),
            CertTableEntry(ARK_GUID, ark),
        ]
    )

    def pem(der: bytes) -> bytes:
        with warnings.catch_warnings():  # AMD VCEKs have serial number 0 (RFC 5280 wants > 0)
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
        return cert.public_bytes(serialization.Encoding.PEM)

    pem_table = build_cert_table(
        [CertTableEntry(VCEK_GUID, pem(vcek)), CertTableEntry(ARK_GUID, pem(ark))]
    )

    intel = (vector("tdx_quote"), vector("sgx_quote"), vector("tdx_quote_outdated"))
    snp = (gosev_report(), dstack_report())
    tdx = intel[0]
    docs = (
        json.dumps(build_evidence(tdx, evidence_claims, tee="tdx", provider="configfs-tsm")),
        json.dumps(
            build_evidence(
                snp[1],
                evidence_claims,
                tee="sev-snp",
                provider="configfs-tsm",
                endorsements=("sev-snp-cert-table", der_table),
            )
        ),
    )
    return Corpus(
        certificates=(*pems, *ders),
        extensions=tuple(v for v in map(_evidence_value, ders) if v is not None),
        claims=claims,
        quotes=(*intel, *(c.quote for c in parsed), *snp),
        snp_reports=snp,
        cert_tables=(der_table, pem_table),
        evidence=tuple(d.encode() for d in docs),
    )


_EDIT = st.tuples(
    st.integers(0, 6),  # which edit
    st.integers(0, 1 << 20),  # where (modulo the length)
    st.integers(0, 255),  # a byte or a bit
    st.integers(1, 64),  # how many bytes
    st.binary(max_size=32),  # bytes to insert
)


def mutate(seed: bytes, edits: list[tuple[int, int, int, int, bytes]]) -> bytes:
    b = bytearray(seed)
    for op, where, value, n, payload in edits:
        if not b:
            b += payload or b"\x00"
            continue
        i = where % len(b)
        if op == 0:
            b[i] ^= 1 << (value % 8)
        elif op == 1:
            b[i] = value
        elif op == 2:
            del b[i : i + n]
        elif op == 3:
            b[i:i] = payload
        elif op == 4:
            del b[i:]
        elif op == 5:
            b += payload * max(1, n // 8)
        else:
            j = (where // 7) % len(b)
            b[i:i] = b[j : j + n]
    return bytes(b)


def mutations(seeds: tuple[bytes, ...], max_edits: int = 6) -> st.SearchStrategy[bytes]:
    """One seed, edited 0 to ``max_edits`` times (0 keeps the real input: a sanity case)."""
    return st.builds(mutate, st.sampled_from(seeds), st.lists(_EDIT, max_size=max_edits))


def run_parser(
    parse: Callable[[bytes], Any], data: bytes, errors: tuple[type[BaseException], ...]
) -> Any:
    """``parse(data)``: its result, or None when it raised one of ``errors``. Any other
    exception propagates (the test fails); so does a call slower than :data:`CALL_LIMIT`."""
    started = time.monotonic()
    try:
        return parse(data)
    except errors:
        return None
    finally:
        elapsed = time.monotonic() - started
        assert elapsed < CALL_LIMIT, f"{parse.__name__} took {elapsed:.2f} s on {len(data)} bytes"
