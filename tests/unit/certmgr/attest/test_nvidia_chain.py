"""The chain checks and FWID reading shared by device and RIM chains."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509

from certmgr.attest.nvidia_chain import (
    at_time,
    check_chain,
    fwid_of,
    load_pem_chain,
    nvidia_anchors,
)
from certmgr.errors import VerifyError
from tests.helpers.nvidia import h100_chain, make_ca, make_leaf

WHEN = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_the_shipped_roots_match_their_pins() -> None:
    a = nvidia_anchors()
    assert a.device_root.subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"
    assert "NVIDIA CoRIM signing Root CA" in a.rim_root.subject.rfc4514_string()


def test_the_real_h100_chain_checks() -> None:
    chain = load_pem_chain(h100_chain())
    assert len(chain) == 5
    assert check_chain(chain, nvidia_anchors().device_root, WHEN, what="c") == []
    assert fwid_of(chain[0]) is not None and fwid_of(chain[1]) is None


def test_problems_are_named() -> None:
    root = make_ca("R")
    not_ca = make_ca("N", root, ca=False)
    leaf = make_leaf("L", not_ca, b"\0" * 48)
    problems = check_chain([leaf.cert, not_ca.cert, root.cert], root.cert, WHEN, what="c")
    assert ("chain", "c: issuer 'N' is not a CA") in problems
    limited = make_ca("P", root, path_length=0)
    mid = make_ca("M", limited)
    leaf = make_leaf("L", mid, b"\0" * 48)
    problems = check_chain(
        [leaf.cert, mid.cert, limited.cert, root.cert], root.cert, WHEN, what="c"
    )
    assert any("path length 0 exceeded" in m for _, m in problems)
    other = make_ca("R")
    problems = check_chain(
        [leaf.cert, mid.cert, limited.cert, root.cert], other.cert, WHEN, what="c"
    )
    assert any("not the pinned NVIDIA root" in m for _, m in problems)
    assert check_chain([root.cert], root.cert, WHEN, what="c")[0][0] == "chain"
    late = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    assert {
        k for k, _ in check_chain([mid.cert, limited.cert, root.cert], root.cert, late, what="c")
    } == {"validity"}


def test_fwid_tail_is_required_exactly() -> None:
    root = make_ca("R")
    bad = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), b"\x30\x00")
    cert = (
        x509.CertificateBuilder()
        .subject_name(root.cert.subject)
        .issuer_name(root.cert.subject)
        .public_key(root.key.public_key())
        .serial_number(1)
        .not_valid_before(dt.datetime(2024, 1, 1))
        .not_valid_after(dt.datetime(2030, 1, 1))
        .add_extension(bad, critical=False)
        .sign(
            root.key,
            __import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA384"]).SHA384(),
        )
    )
    with pytest.raises(VerifyError, match="FWID"):
        fwid_of(cert)


def test_pem_chain_limits_and_times() -> None:
    with pytest.raises(VerifyError, match="more than"):
        load_pem_chain(h100_chain() * 2)
    with pytest.raises(VerifyError, match="unreadable"):
        load_pem_chain(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(VerifyError, match="verification time"):
        at_time(1e20)
    assert at_time(0) == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
