"""certmgr.attest.dip1: dstack's DIP-1 report_data decoded strictly, bad input refused."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certmgr.attest import dip1
from certmgr.errors import RaTlsError


def test_dip1_rules() -> None:
    key = bytes.fromhex("039e695a6b5e24824e8fcfe923bfa9cde0f1cb51b6ab5f060eff3c1cd45d057910")
    good = b"dip1::secp256k1c-pk:" + base64.urlsafe_b64encode(key).rstrip(b"=")
    assert len(good) == 64 and dip1.parse_dip1(good) == dip1.Dip1Key("secp256k1", key)
    ed = b"dip1::ed25519-pk:" + base64.urlsafe_b64encode(bytes(range(32))).rstrip(b"=")
    assert dip1.parse_dip1(ed.ljust(64, b"\x00")) == dip1.Dip1Key("ed25519", bytes(range(32)))
    assert dip1.parse_dip1(bytes(64)) is None and dip1.parse_dip1(b"dip1::") is None
    with pytest.raises(RaTlsError, match="after the text"):
        dip1.parse_dip1(ed.ljust(63, b"\x00") + b"\x01")
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare = alphabet[alphabet.index(ed[-1:]) | 1 : alphabet.index(ed[-1:]) + 2][:1]  # low bit set
    with pytest.raises(RaTlsError, match="canonical"):  # a spare bit of the last character set
        dip1.parse_dip1((ed[:-1] + spare).ljust(64, b"\x00"))
    with pytest.raises(RaTlsError, match="secp256k1 point"):
        dip1.parse_dip1(
            b"dip1::secp256k1c-pk:" + base64.urlsafe_b64encode(b"\x05" + bytes(32)).rstrip(b"=")
        )
    with pytest.raises(RaTlsError, match="unknown key type"):
        dip1.parse_dip1(b"dip1::rsa-pk:AAAA".ljust(64, b"\x00"))
    with pytest.raises(RaTlsError, match="Ethereum"):
        dip1.Dip1Key("ed25519", bytes(32)).eth_address()


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=44))
def test_fuzz_dip1_raises_only_ratls_error(tail: bytes) -> None:
    for prefix in (dip1.DIP1_SECP256K1, dip1.DIP1_ED25519, b"dip1::"):
        data = (prefix + tail)[:64].ljust(64, b"\x00")
        with contextlib.suppress(RaTlsError):
            dip1.parse_dip1(data)
