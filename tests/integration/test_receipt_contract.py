"""Receipts checked on chain: MeasurementPolicy's signer registry and ``verifyReceipt`` on anvil.

The contract's EIP-712 digest must equal ``certmgr.receipts.format.typed_data_hash`` (the
RECEIPTS.md test vector and many generated inputs, non-ASCII included); ``verifyReceipt``
must accept a receipt from ``certmgr.receipts.signing.sign_receipt`` only for a signer
registered for exactly the receipt's measurement while that measurement is allowed, and
reject every malformed or malleated signature without reverting. Access control, events and
version bumps of ``registerSigner`` / ``unregisterSigner`` are checked with the custom errors
decoded by name.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from certmgr.eth import eth_import_guard
from certmgr.policy.artifacts import ABI
from certmgr.receipts.format import RECEIPT_TYPEHASH, Receipt, domain_separator, typed_data_hash
from certmgr.receipts.signing import sign_receipt
from certmgr.receipts.verify import recover_signer
from tests.helpers.chain import AnvilFactory, AsyncWeb3, ContractCalls, deploy_policy, web3_for

with eth_import_guard():
    from eth_account import Account

MID = b"\xa1" * 32
MID2 = b"\xb2" * 32
ZERO_ADDRESS = "0x" + "00" * 20
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# docs/RECEIPTS.md "Test vector".
VECTOR_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
VECTOR_DIGEST = bytes.fromhex("481bc0c14d63f86cc36997bb41a027a2736249423d1e5c9e54dd02a07d5b6886")
VECTOR_SIGNATURE = bytes.fromhex(
    "3ac6f818034966c6787a2bab9cd60c7b9b5575182bc7ebabfc45dc0c46c07527"
    "3cdc82de03913562c7a440194e241811683f829b63bbebf31101d7fb27a218e21b"
)
VECTOR_SIGNER = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23"


def fields(r: Receipt) -> tuple[bytes, bytes, str, str, int, bytes]:
    """The receipt fields as the contract takes them: the order of the EIP-712 type."""
    return (
        r.request_sha256,
        r.response_sha256,
        r.model,
        r.response_id,
        r.timestamp,
        r.measurement_id,
    )


def digest_of(r: Receipt) -> bytes:
    return typed_data_hash(
        request_sha256=r.request_sha256,
        response_sha256=r.response_sha256,
        model=r.model,
        response_id=r.response_id,
        timestamp=r.timestamp,
        measurement_id=r.measurement_id,
    )


def vector_receipt() -> Receipt:
    return sign_receipt(
        VECTOR_KEY,
        request_sha256=hashlib.sha256(b"{}").digest(),
        response_sha256=hashlib.sha256(b'{"id":"r1"}').digest(),
        model="m",
        response_id="r1",
        timestamp=1_700_000_000,
        measurement_id=bytes(range(32)),
    )


def signed(key: bytes, measurement: bytes = MID, **changes: Any) -> Receipt:
    base: dict[str, Any] = {
        "request_sha256": hashlib.sha256(b'{"model":"llama-3"}').digest(),
        "response_sha256": hashlib.sha256(b'{"id":"chatcmpl-1"}').digest(),
        "model": "llama-3",
        "response_id": "chatcmpl-1",
        "timestamp": 1_763_740_800,
        "measurement_id": measurement,
    }
    base.update(changes)
    return sign_receipt(key, **base)


@dataclass
class Chain(ContractCalls):
    w3: AsyncWeb3[Any]
    c: Any
    owner: str
    guardian: str
    other: str

    async def verify(self, r: Receipt, signature: bytes | None = None) -> tuple[bool, str]:
        sig = r.signature if signature is None else signature
        valid, signer = await self.c.functions.verifyReceipt(*fields(r), sig).call()
        return bool(valid), str(signer)

    async def version(self) -> int:
        return int(await self.c.functions.version().call())


@pytest.fixture
async def chain(anvil: AnvilFactory) -> AsyncIterator[Chain]:
    node = await anvil()
    w3 = web3_for(node.url)
    accounts = await w3.eth.accounts
    address = await deploy_policy(node.url, accounts[0])
    c = w3.eth.contract(address=address, abi=ABI)
    ch = Chain(w3, c, accounts[0], accounts[1], accounts[2])
    await ch.send(c.functions.setGuardian(ch.guardian), ch.owner)
    await ch.send(c.functions.allow(MID, "build 1"), ch.owner)
    yield ch
    await w3.provider.disconnect()  # type: ignore[attr-defined]


def key_and_address() -> tuple[bytes, str]:
    acct = Account.create()
    return bytes(acct.key), str(acct.address)


# -- the digest ----------------------------------------------------------------------------


async def test_digest_constants_and_vector(chain: Chain) -> None:
    c = chain.c
    assert await c.functions.RECEIPT_TYPEHASH().call() == RECEIPT_TYPEHASH
    assert await c.functions.RECEIPT_DOMAIN_SEPARATOR().call() == domain_separator()
    r = vector_receipt()
    assert r.signature == VECTOR_SIGNATURE  # the vector itself (docs and library agree)
    assert await c.functions.receiptDigest(*fields(r)).call() == VECTOR_DIGEST
    # The vector's signer, registered for the vector's measurement, verifies on chain.
    await chain.send(c.functions.allow(bytes(range(32)), "vector"), chain.owner)
    await chain.send(c.functions.registerSigner(VECTOR_SIGNER, bytes(range(32))), chain.owner)
    assert await chain.verify(r) == (True, VECTOR_SIGNER)


def _text(rng: random.Random) -> str:
    alphabet = "aZ09-_./ éßøñ漢字テスト🦀🚀\u0000\u00a0\u200b\U0010fffd"
    out = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
    while len(out.encode("utf-8")) > 256:
        out = out[:-1]
    return out


async def test_digest_matches_the_library_for_many_inputs(chain: Chain) -> None:
    rng = random.Random(20261121)  # reproducible test data
    edge = [
        ("", "", 0, b"\x00" * 32),
        ("x" * 256, "y" * 256, 2**64 - 1, b"\xff" * 32),
        ("é" * 128, "🦀" * 64, 1, MID),  # 256 UTF-8 bytes each, multi-byte code points
        ("llama-3 「テスト」", "chatcmpl-ñ", 1_763_740_800, MID2),
    ]
    cases = edge + [
        (_text(rng), _text(rng), rng.randrange(2**64), rng.randbytes(32)) for _ in range(40)
    ]
    inputs = [
        {
            "request_sha256": rng.randbytes(32),
            "response_sha256": rng.randbytes(32),
            "model": model,
            "response_id": rid,
            "timestamp": ts,
            "measurement_id": mid,
        }
        for model, rid, ts, mid in cases
    ]
    got = await asyncio.gather(
        *(
            chain.c.functions.receiptDigest(
                i["request_sha256"],
                i["response_sha256"],
                i["model"],
                i["response_id"],
                i["timestamp"],
                i["measurement_id"],
            ).call()
            for i in inputs
        )
    )
    want = [typed_data_hash(**i) for i in inputs]
    assert got == want
    assert len(set(want)) == len(want)  # distinct inputs, distinct digests


# -- verifyReceipt -------------------------------------------------------------------------


async def test_accepts_only_a_signer_registered_for_that_measurement(chain: Chain) -> None:
    key, address = key_and_address()
    r = signed(key)
    # Unregistered: the signer is recovered and reported, but the receipt is not valid.
    assert await chain.verify(r) == (False, address)
    assert await chain.c.functions.signerMeasurement(address).call() == b"\x00" * 32

    await chain.send(chain.c.functions.registerSigner(address, MID), chain.owner)
    assert await chain.c.functions.signerMeasurement(address).call() == MID
    assert await chain.verify(r) == (True, address)

    # Another, unregistered key signing the same fields is not accepted.
    other_key, other_address = key_and_address()
    assert await chain.verify(signed(other_key)) == (False, other_address)

    # Registered for MID2 (allowed too), the signer's receipts for MID no longer verify, its
    # receipts for MID2 do: a signer belongs to exactly one measurement.
    await chain.send(chain.c.functions.allow(MID2, "build 2"), chain.owner)
    await chain.send(chain.c.functions.registerSigner(address, MID2), chain.owner)
    assert await chain.verify(r) == (False, address)
    assert await chain.verify(signed(key, MID2)) == (True, address)


async def test_every_tampered_field_is_rejected(chain: Chain) -> None:
    key, address = key_and_address()
    await chain.send(chain.c.functions.registerSigner(address, MID), chain.owner)
    r = signed(key)
    assert await chain.verify(r) == (True, address)
    tampered = {
        "request_sha256": hashlib.sha256(b"other request").digest(),
        "response_sha256": hashlib.sha256(b"other response").digest(),
        "model": "llama-3 ",
        "response_id": "chatcmpl-2",
        "timestamp": r.timestamp + 1,
        "measurement_id": MID2,
    }
    for name, value in tampered.items():
        bad = replace(r, **{name: value})  # same signature, one field changed
        valid, signer = await chain.verify(bad)
        assert not valid, name
        assert signer != address, name  # recovers to some other key (or to nothing)
    # MID2 is allowed and `address` registered for it: the tampered measurement still fails.
    await chain.send(chain.c.functions.allow(MID2, "b2"), chain.owner)
    assert (await chain.verify(replace(r, measurement_id=MID2)))[0] is False


async def test_malformed_and_malleable_signatures_are_rejected_without_reverting(
    chain: Chain,
) -> None:
    key, address = key_and_address()
    await chain.send(chain.c.functions.registerSigner(address, MID), chain.owner)
    r = signed(key)
    sig = r.signature
    rr, s, v = sig[:32], int.from_bytes(sig[32:64], "big"), sig[64]
    # The high-s twin is a valid secp256k1 signature by the same key (EIP-2 forbids it).
    twin = rr + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    with eth_import_guard():
        from eth_keys.datatypes import Signature

    twin_key = Signature(vrs=(twin[64] - 27, int.from_bytes(rr, "big"), SECP256K1_N - s))
    assert twin_key.recover_public_key_from_msg_hash(digest_of(r)).to_checksum_address() == (
        address
    )
    assert await chain.verify(r, twin) == (False, ZERO_ADDRESS)
    for bad_v in (0, 1, 26, 29, 255):
        assert await chain.verify(r, sig[:64] + bytes([bad_v])) == (False, ZERO_ADDRESS), bad_v
    # The other parity recovers another key (or none): never the signer.
    assert (await chain.verify(r, sig[:64] + bytes([55 - v])))[0] is False
    for bad in (
        sig[:64],  # 64 bytes (EIP-2098 compact form is not accepted)
        sig + b"\x00",  # 66 bytes
        b"",
        b"\x00" * 32 + sig[32:],  # r = 0
        rr + b"\x00" * 32 + bytes([v]),  # s = 0
        SECP256K1_N.to_bytes(32, "big") + sig[32:],  # r = n
        b"\xff" * 64 + bytes([v]),
    ):
        assert await chain.verify(r, bad) == (False, ZERO_ADDRESS), bad.hex()
    # The library agrees with the contract on the twin and on a wrong v.
    for bad in (twin, sig[:64] + b"\x1d"):
        with pytest.raises(ValueError, match="signature"):
            recover_signer(digest_of(r), bad)


async def test_revocation_invalidates_receipts_and_re_allow_restores_registered_ones(
    chain: Chain,
) -> None:
    key, address = key_and_address()
    await chain.send(chain.c.functions.registerSigner(address, MID), chain.owner)
    r = signed(key)
    assert await chain.verify(r) == (True, address)

    # The guardian's kill switch: revoking the build invalidates all its receipts at once.
    await chain.send(chain.c.functions.revoke(MID), chain.guardian)
    assert await chain.verify(r) == (False, address)
    # ...but not the registration: re-allowing the same build makes them valid again.
    assert await chain.c.functions.signerMeasurement(address).call() == MID
    await chain.send(chain.c.functions.allow(MID, "build 1 again"), chain.owner)
    assert await chain.verify(r) == (True, address)

    # Unregistered in the meantime: re-allowing does not bring the signer back.
    await chain.send(chain.c.functions.revoke(MID), chain.owner)
    await chain.send(chain.c.functions.unregisterSigner(address), chain.owner)
    await chain.send(chain.c.functions.allow(MID, "build 1, third time"), chain.owner)
    assert await chain.verify(r) == (False, address)


async def test_replace_retires_the_old_builds_receipts(chain: Chain) -> None:
    old_key, old_address = key_and_address()
    new_key, new_address = key_and_address()
    await chain.send(chain.c.functions.registerSigner(old_address, MID), chain.owner)
    old_receipt = signed(old_key)
    assert (await chain.verify(old_receipt))[0] is True
    await chain.send(chain.c.functions.replace(MID, MID2, "build 2"), chain.owner)
    assert await chain.verify(old_receipt) == (False, old_address)
    # The new build's signer must be registered for the new id before its receipts count.
    new_receipt = signed(new_key, MID2)
    assert await chain.verify(new_receipt) == (False, new_address)
    assert (
        await chain.reverts(chain.c.functions.registerSigner(new_address, MID), chain.owner)
        == f"NotAllowed(0x{MID.hex()})"
    )
    await chain.send(chain.c.functions.registerSigner(new_address, MID2), chain.owner)
    assert await chain.verify(new_receipt) == (True, new_address)
    assert await chain.verify(old_receipt) == (False, old_address)


async def test_register_and_unregister_access_events_and_version(chain: Chain) -> None:
    c = chain.c
    _, address = key_and_address()
    v0 = await chain.version()

    # Only the owner registers; the guardian is a kill switch and cannot.
    assert await chain.reverts(c.functions.registerSigner(address, MID), chain.other) == (
        f"NotOwner({chain.other})"
    )
    assert await chain.reverts(c.functions.registerSigner(address, MID), chain.guardian) == (
        f"NotOwner({chain.guardian})"
    )
    assert await chain.reverts(c.functions.registerSigner(ZERO_ADDRESS, MID), chain.owner) == (
        "ZeroAddress()"
    )
    assert (
        await chain.reverts(c.functions.registerSigner(address, b"\x00" * 32), chain.owner)
        == "ZeroMeasurement()"
    )
    assert await chain.reverts(c.functions.registerSigner(address, MID2), chain.owner) == (
        f"NotAllowed(0x{MID2.hex()})"
    )
    assert await chain.reverts(c.functions.unregisterSigner(address), chain.owner) == (
        f"SignerNotRegistered({address})"
    )
    assert await chain.version() == v0  # failures change nothing

    receipt = await chain.send(c.functions.registerSigner(address, MID), chain.owner)
    (ev,) = c.events.SignerRegistered().process_receipt(receipt)
    assert (ev["args"]["signer"], ev["args"]["measurementId"], ev["args"]["version"]) == (
        address,
        MID,
        v0 + 1,
    )
    assert await chain.version() == v0 + 1

    # Nobody else unregisters; the guardian may.
    assert await chain.reverts(c.functions.unregisterSigner(address), chain.other) == (
        f"NotOwnerOrGuardian({chain.other})"
    )
    receipt = await chain.send(c.functions.unregisterSigner(address), chain.guardian)
    (ev,) = c.events.SignerUnregistered().process_receipt(receipt)
    assert ev["args"]["signer"] == address
    assert ev["args"]["measurementId"] == MID
    assert ev["args"]["by"] == chain.guardian
    assert ev["args"]["version"] == v0 + 2
    assert await c.functions.signerMeasurement(address).call() == b"\x00" * 32
    assert await chain.reverts(c.functions.unregisterSigner(address), chain.guardian) == (
        f"SignerNotRegistered({address})"
    )

    # Owner registers again (and moves it), owner unregisters: each a version bump.
    await chain.send(c.functions.allow(MID2, "b2"), chain.owner)  # v0 + 3
    await chain.send(c.functions.registerSigner(address, MID), chain.owner)
    receipt = await chain.send(c.functions.registerSigner(address, MID2), chain.owner)
    (ev,) = c.events.SignerRegistered().process_receipt(receipt)
    assert ev["args"]["measurementId"] == MID2
    receipt = await chain.send(c.functions.unregisterSigner(address), chain.owner)
    (ev,) = c.events.SignerUnregistered().process_receipt(receipt)
    assert (ev["args"]["measurementId"], ev["args"]["by"]) == (MID2, chain.owner)
    assert await chain.version() == v0 + 6
    # The measurement list itself is untouched by signer changes.
    _, ids, _ = await c.functions.snapshot().call()
    assert sorted(ids) == [MID, MID2]
