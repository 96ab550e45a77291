"""certmgr.policy.contract: reverts decoded to the contract's custom errors by name."""

from __future__ import annotations

from eth_abi.abi import encode as abi_encode
from eth_utils.crypto import keccak

from certmgr.policy.contract import decode_revert


def test_decode_revert_names_custom_errors() -> None:
    sel = keccak(text="NotOwner(address)")[:4]
    data = sel + abi_encode(["address"], ["0x70997970c51812dc3a010c7d01b50e0d17dc79c8"])
    assert decode_revert(data) == "NotOwner(0x70997970C51812dc3A010C7d01b50e0d17dc79C8)"
    sel = keccak(text="LabelTooLong(uint256,uint256)")[:4]
    assert decode_revert(sel + abi_encode(["uint256", "uint256"], [65, 64])) == (
        "LabelTooLong(65, 64)"
    )
    sel = keccak(text="Error(string)")[:4]
    assert decode_revert(sel + abi_encode(["string"], ["nope"])) == "Error('nope')"
    assert decode_revert(b"") == "revert without reason"
    assert decode_revert(b"\xde\xad\xbe\xef").startswith("unknown error 0xdeadbeef")
    truncated = keccak(text="NotOwner(address)")[:4] + b"\x00" * 5
    assert decode_revert(truncated).startswith("NotOwner(<undecodable")
