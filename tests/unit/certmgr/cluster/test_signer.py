"""certmgr.cluster.signer: the fleet's receipt signing key sealed to the cluster key."""

from __future__ import annotations

import os

import pytest

from certmgr.cluster.envelope import ValueKey
from certmgr.cluster.signer import SIGNER_VALUE, open_signer, replace_signer, seal_signer
from certmgr.errors import EnvelopeError
from certmgr.receipts.format import SECP256K1_N
from certmgr.receipts.signing import SigningKey
from tests.helpers.receipts import ACCOUNT, KEY

CLUSTER_KEY = os.urandom(32)


def _vk(epoch: int = 1, cluster: str = "fleet", key: bytes = CLUSTER_KEY) -> ValueKey:
    return ValueKey(key, epoch, cluster)


def test_sealed_and_opened_names_the_same_address_and_no_plaintext_scalar() -> None:
    key = SigningKey.from_private_bytes(KEY)
    blob = seal_signer(_vk(3), 5, key, 1_700_000_000)
    assert KEY not in blob and KEY.hex().encode() not in blob
    signer = open_signer(_vk(3).open(SIGNER_VALUE, blob))
    # The address as an independent implementation (eth-account) derives it from the key.
    assert signer.address_hex == ACCOUNT.address.lower()
    assert (signer.version, signer.epoch, signer.created_at) == (5, 3, 1_700_000_000)
    assert signer.previous == b"" and signer.previous_hex == ""


def test_the_value_is_bound_to_name_cluster_epoch_and_key() -> None:
    blob = seal_signer(_vk(), 1, SigningKey.generate(), 1)
    with pytest.raises(EnvelopeError, match="fails authentication"):
        _vk().open("data/cert", blob)  # moved to another name
    with pytest.raises(EnvelopeError, match="fails authentication"):
        _vk(cluster="other").open(SIGNER_VALUE, blob)
    with pytest.raises(EnvelopeError, match="epoch"):
        _vk(2).open(SIGNER_VALUE, blob)
    with pytest.raises(EnvelopeError, match="fails authentication"):
        _vk(key=os.urandom(32)).open(SIGNER_VALUE, blob)
    flipped = bytearray(blob)
    flipped[-20] ^= 1
    with pytest.raises(EnvelopeError, match="fails authentication"):
        _vk().open(SIGNER_VALUE, bytes(flipped))


def test_replacement_is_a_new_key_naming_the_old_one_with_the_version_raised() -> None:
    old = open_signer(_vk().open(SIGNER_VALUE, seal_signer(_vk(), 4, SigningKey.generate(), 1)))
    key, blob = replace_signer(_vk(2), old, 2)
    new = open_signer(_vk(2).open(SIGNER_VALUE, blob))
    assert new.address_hex == key.address_hex != old.address_hex
    assert new.version == 5 and new.epoch == 2
    assert new.previous == old.key.address and new.previous_hex == old.address_hex


@pytest.mark.parametrize(
    "plaintext",
    [
        b"",
        b"teeproxy-receipt-signer/1\0" + bytes(59),  # one byte short
        b"teeproxy-receipt-signer/2\0" + bytes(60),  # another format
        b"teeproxy-receipt-signer/1\0" + bytes(8) + bytes(32) + bytes(20),  # scalar 0
        b"teeproxy-receipt-signer/1\0"
        + bytes(8)
        + SECP256K1_N.to_bytes(32, "big")  # scalar n
        + bytes(20),
    ],
)
def test_malformed_plaintexts_are_refused(plaintext: bytes) -> None:
    blob = _vk().seal(SIGNER_VALUE, 1, plaintext)
    with pytest.raises(EnvelopeError):
        open_signer(_vk().open(SIGNER_VALUE, blob))


def test_a_previous_signer_must_be_an_address() -> None:
    with pytest.raises(EnvelopeError, match="20-byte"):
        seal_signer(_vk(), 1, SigningKey.generate(), 1, b"\x01" * 19)
