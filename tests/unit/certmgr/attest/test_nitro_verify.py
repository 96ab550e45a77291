"""certmgr.attest.nitro_verify: the two real Nitro documents verify at their pinned times
against the shipped AWS root; a flipped byte in each signed region, a foreign root, an
expired chain and a broken certificate profile are each refused with their own reason."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest.nitro_verify import (
    AWS_NITRO_ROOT_G1_SHA256,
    NitroPolicy,
    NitroReason,
    nitro_root,
    verify_nitro_document,
    verify_nitro_parsed,
)
from certmgr.errors import VerifyError
from tests.helpers.nitro import (
    DSTACK_ATTEST,
    NITRO_DATA,
    NSM_QVL,
    doc_with,
    flip,
    nitro_vector,
    payload_map,
    pinned_time,
    rebuild,
    with_payload,
)


def test_shipped_root_is_awss_published_g1_root() -> None:
    root = nitro_root()
    der = root.public_bytes(serialization.Encoding.DER)
    assert hashlib.sha256(der).hexdigest() == AWS_NITRO_ROOT_G1_SHA256
    # The copy in tests/data is dstack's nsm-qvl certs/AWS_NitroEnclaves_Root-G1.pem.
    upstream = x509.load_pem_x509_certificate(
        (NITRO_DATA / "AWS_NitroEnclaves_Root-G1.pem").read_bytes()
    )
    assert upstream.public_bytes(serialization.Encoding.DER) == der
    assert root.subject.rfc4514_string() == "CN=aws.nitro-enclaves,OU=AWS,O=Amazon,C=US"


@pytest.mark.parametrize("vec", [NSM_QVL, DSTACK_ATTEST])
def test_real_documents_verify_at_their_pinned_time(vec: tuple[str, str, int]) -> None:
    res = verify_nitro_document(nitro_vector(vec[0]), pinned_time(vec))
    assert res.failures == () and res.status == "Verified" and res.ok
    assert len(res.chain_sha256) == 5 and res.chain_sha256[-1] == AWS_NITRO_ROOT_G1_SHA256
    d = res.details()
    assert d["timestamp_ms"] == vec[2] and d["pcrs"]["1"].startswith("0343b056")


@pytest.mark.parametrize("vec", [NSM_QVL, DSTACK_ATTEST])
def test_expired_chain_is_refused(vec: tuple[str, str, int]) -> None:
    # The leaf lives three hours: a day later it is expired, and so the document.
    res = verify_nitro_document(nitro_vector(vec[0]), pinned_time(vec) + 86400)
    assert NitroReason.VALIDITY in res.reasons and res.status == "Invalid"
    assert any("leaf valid" in f.message for f in res.failures)
    # Before the leaf was issued (the document's time is inside; "now" is not).
    early = verify_nitro_document(nitro_vector(vec[0]), pinned_time(vec) - 7200)
    assert NitroReason.VALIDITY in early.reasons


def test_document_time_must_lie_in_the_chain_validity() -> None:
    raw = nitro_vector(NSM_QVL[0])
    doc = doc_with(raw, timestamp_ms=NSM_QVL[2] - 3 * 3600 * 1000)
    res = verify_nitro_parsed(doc, pinned_time(NSM_QVL))
    assert any("not at document time" in f.message for f in res.failures)


def test_payload_flip_breaks_the_signature() -> None:
    raw = nitro_vector(NSM_QVL[0])
    doc = payload_map(raw)
    pcrs = dict(doc["pcrs"])  # type: ignore[call-overload]
    pcrs[0] = flip(pcrs[0], 7)
    res = verify_nitro_document(with_payload(raw, pcrs=pcrs), pinned_time(NSM_QVL))
    assert res.reasons == (NitroReason.SIGNATURE,)
    moved = verify_nitro_document(
        with_payload(raw, user_data=b"\x01" + bytes(63)), pinned_time(NSM_QVL)
    )
    assert moved.reasons == (NitroReason.SIGNATURE,)


def test_protected_header_is_signed() -> None:
    # Same algorithm, one more (harmless) protected label: parses, but the signature was
    # over the original protected bytes.
    raw = rebuild(nitro_vector(NSM_QVL[0]), protected=cbor2.dumps({1: -35, 4: b"kid"}))
    assert verify_nitro_document(raw, pinned_time(NSM_QVL)).reasons == (NitroReason.SIGNATURE,)


@pytest.mark.parametrize("index", [0, 47, 48, 95])
def test_signature_flip_is_refused(index: int) -> None:
    raw = nitro_vector(NSM_QVL[0])
    sig = cbor2.loads(raw)[3]
    res = verify_nitro_document(rebuild(raw, signature=flip(sig, index)), pinned_time(NSM_QVL))
    assert res.reasons == (NitroReason.SIGNATURE,)


def test_unprotected_header_is_not_signed_but_harmless() -> None:
    raw = rebuild(nitro_vector(NSM_QVL[0]), unprotected={4: b"kid"})
    assert verify_nitro_document(raw, pinned_time(NSM_QVL)).ok


def _flip_in_tbs(der: bytes) -> bytes:
    cert = x509.load_der_x509_certificate(der)
    tbs = cert.tbs_certificate_bytes
    at = der.index(tbs) + len(tbs) // 2
    return flip(der, at)


def test_flipped_certificate_in_chain_is_refused() -> None:
    raw = nitro_vector(NSM_QVL[0])
    doc = doc_with(raw)
    for i in (1, 2, 3):
        bundle = list(doc.cabundle)
        bundle[i] = _flip_in_tbs(bundle[i])
        res = verify_nitro_parsed(doc_with(raw, cabundle=tuple(bundle)), pinned_time(NSM_QVL))
        assert NitroReason.CHAIN in res.reasons, i
    leaf = verify_nitro_parsed(
        doc_with(raw, certificate=_flip_in_tbs(doc.certificate)), pinned_time(NSM_QVL)
    )
    assert NitroReason.CHAIN in leaf.reasons


def test_foreign_root_and_reordered_or_swapped_chains_are_refused() -> None:
    raw, other = nitro_vector(NSM_QVL[0]), nitro_vector(DSTACK_ATTEST[0])
    doc, doc2 = doc_with(raw), doc_with(other)
    t = pinned_time(NSM_QVL)
    not_root = verify_nitro_parsed(doc_with(raw, cabundle=doc.cabundle[1:]), t)
    assert not_root.reasons == (NitroReason.CHAIN,)
    assert "AWS Nitro root G1" in not_root.failures[0].message
    swapped = (*doc.cabundle[:2], doc.cabundle[3], doc.cabundle[2])
    assert NitroReason.CHAIN in verify_nitro_parsed(doc_with(raw, cabundle=swapped), t).reasons
    # The other document's leaf: another enclave on the same instance, whose CA kept its
    # key, so the chain links; but that leaf did not sign this document (and was not yet
    # issued at its time).
    res = verify_nitro_parsed(doc_with(raw, certificate=doc2.certificate), t)
    assert NitroReason.SIGNATURE in res.reasons and NitroReason.VALIDITY in res.reasons


def test_leaf_as_issuer_is_not_a_ca() -> None:
    raw = nitro_vector(NSM_QVL[0])
    doc = doc_with(raw)
    # Insert the leaf as if it were an intermediate: it is no CA and signed nothing.
    res = verify_nitro_parsed(
        doc_with(raw, cabundle=(*doc.cabundle, doc.certificate)), pinned_time(NSM_QVL)
    )
    assert any("not a CA" in f.message for f in res.failures)


def test_timestamp_policy() -> None:
    raw = nitro_vector(NSM_QVL[0])
    t = pinned_time(NSM_QVL)
    assert verify_nitro_document(raw, t + 120, NitroPolicy(max_age=300)).ok
    old = verify_nitro_document(raw, t + 600, NitroPolicy(max_age=300))
    assert old.reasons == (NitroReason.TIMESTAMP,)
    future = verify_nitro_document(raw, t - 61, NitroPolicy(clock_skew=60))
    assert NitroReason.TIMESTAMP in future.reasons
    with pytest.raises(VerifyError):
        NitroPolicy(max_age=0)
    with pytest.raises(VerifyError):
        NitroPolicy(clock_skew=-1)


def test_malformed_document_is_a_verdict() -> None:
    res = verify_nitro_document(b"\x84\x00", 0)
    assert res.reasons == (NitroReason.MALFORMED,) and res.document is None and res.details() == {}


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=4526))
def test_fuzz_every_flipped_byte_is_refused(index: int) -> None:
    raw = nitro_vector(NSM_QVL[0])
    res = verify_nitro_document(flip(raw, index), pinned_time(NSM_QVL))
    assert not res.ok


def test_a_flip_that_duplicates_a_chain_extension_is_refused() -> None:
    """Found by the fuzz test above: byte 2557 flipped gives a chain certificate two
    instances of one extension, which cryptography raises as DuplicateExtension (not a
    ValueError): refused as a chain failure, not a crash."""
    raw = nitro_vector(NSM_QVL[0])
    res = verify_nitro_document(flip(raw, 2557), pinned_time(NSM_QVL))
    assert not res.ok
