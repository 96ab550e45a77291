"""Sealed cluster values: bound to cluster, name, version and epoch; rollbacks refused."""

from __future__ import annotations

import os

import pytest

from certmgr.cluster.envelope import MAX_VALUE, ValueKey, Watermarks, peek
from certmgr.errors import EnvelopeError, RollbackError

KEY = os.urandom(32)


def test_round_trip_and_header() -> None:
    vk = ValueKey(KEY, 3, "fleet")
    blob = vk.seal("data/cert", 7, b"secret bytes")
    assert peek(blob) == (3, 7)
    opened = vk.open("data/cert", blob)
    assert (opened.epoch, opened.version, opened.plaintext) == (3, 7, b"secret bytes")
    assert b"secret bytes" not in blob


@pytest.mark.parametrize(
    ("other", "name"),
    [
        (ValueKey(KEY, 3, "fleet"), "data/account"),  # moved to another name
        (ValueKey(KEY, 3, "other"), "data/cert"),  # another cluster
        (ValueKey(os.urandom(32), 3, "fleet"), "data/cert"),  # another key
    ],
)
def test_binding(other: ValueKey, name: str) -> None:
    blob = ValueKey(KEY, 3, "fleet").seal("data/cert", 7, b"x")
    with pytest.raises(EnvelopeError, match="authentication"):
        other.open(name, blob)


def test_header_tampering_fails() -> None:
    vk = ValueKey(KEY, 3, "fleet")
    blob = bytearray(vk.seal("data/cert", 7, b"x"))
    blob[6 + 4 + 7] ^= 1  # the version's last byte: 7 -> 6
    with pytest.raises(EnvelopeError, match="authentication"):
        vk.open("data/cert", bytes(blob))
    blob = bytearray(vk.seal("data/cert", 7, b"x"))
    blob[6 + 3] = 4  # epoch 3 -> 4
    with pytest.raises(EnvelopeError, match="epoch 4"):
        vk.open("data/cert", bytes(blob))


@pytest.mark.parametrize("blob", [b"", b"TPCV1\n", b"nope" * 20, b"TPCV1\n" + bytes(MAX_VALUE)])
def test_malformed(blob: bytes) -> None:
    with pytest.raises(EnvelopeError):
        ValueKey(KEY, 1, "fleet").open("data/cert", blob)


def test_watermarks_refuse_older_versions() -> None:
    w = Watermarks()
    assert w.note("data/cert", 2)
    assert not w.note("data/cert", 2)  # the same version again: fine, not new
    with pytest.raises(RollbackError) as e:
        w.note("data/cert", 1)
    assert (e.value.got, e.value.seen) == (1, 2)
    again = Watermarks.from_mapping({"data/cert": 2, "bad": "x", 5: 1})
    assert again.seen == {"data/cert": 2}
