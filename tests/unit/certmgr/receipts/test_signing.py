"""certmgr.receipts.signing: the receipt signing key, its address, its signatures and
sealed storage.

Interop is checked against eth-account (address derivation, signature bytes) and against
certmgr.receipts.verify's ecrecover; storage against the real sealer with the real file layout.
"""

from __future__ import annotations

import logging
import pickle
import secrets
import stat
from pathlib import Path

import pytest
from eth_account import Account

from certmgr.errors import ReceiptError, SealError, SigningKeyError
from certmgr.keys import InsecureDevSealer
from certmgr.receipts.signing import (
    ADDRESS_FILE,
    KEY_FILE,
    SEALING_LABEL,
    SHARED_ADDRESS_FILE,
    SHARED_KEY_FILE,
    SHARED_SEALING_LABEL,
    SigningKey,
    load_shared_signing_key,
    load_signing_key,
    prepare_signing_key,
    sign_receipt,
    signing_dir,
    store_shared_signing_key,
)
from certmgr.receipts.verify import recover_signer, verify_receipt
from certmgr.sealing import GramineSealer
from tests.helpers.receipts import ACCOUNT, KEY, make

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# The docs/RECEIPTS.md test vector.
VECTOR_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
VECTOR_SIGNATURE = bytes.fromhex(
    "3ac6f818034966c6787a2bab9cd60c7b9b5575182bc7ebabfc45dc0c46c07527"
    "3cdc82de03913562c7a440194e241811683f829b63bbebf31101d7fb27a218e21b"
)


def gramine_sealer(tmp: Path, key: bytes) -> GramineSealer:
    """A real Gramine sealer over a fake ``_sgx_mrenclave`` key file: a new build (another
    MRENCLAVE) reads another key file content."""
    path = tmp / f"keys-{key.hex()}" / "_sgx_mrenclave"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key)
    return GramineSealer(str(path))


def test_address_matches_eth_account() -> None:
    key = SigningKey.from_private_bytes(VECTOR_KEY)
    assert key.address_hex == "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
    for scalar in (1, 2, N - 1, 0x1234567890ABCDEF):
        raw = scalar.to_bytes(32, "big")
        ours = SigningKey.from_private_bytes(raw)
        assert ours.address_hex == Account.from_key(raw).address.lower()


def test_sign_digest_recovers_low_s_and_v() -> None:
    key = SigningKey.generate()
    vs = set()
    for i in range(40):
        digest = bytes([i]) * 32
        sig = key.sign_digest(digest)
        assert len(sig) == 65
        assert sig[64] in (27, 28)
        vs.add(sig[64])
        assert 0 < int.from_bytes(sig[32:64], "big") <= N // 2  # EIP-2
        assert recover_signer(digest, sig) == key.address
    assert vs == {27, 28}  # both recovery ids occur (and both recover correctly)


def test_signature_bytes_equal_eth_account_and_the_documented_vector() -> None:
    key = SigningKey.from_private_bytes(VECTOR_KEY)
    digest = bytes(range(32))
    expected = Account.unsafe_sign_hash(digest, VECTOR_KEY).signature
    assert key.sign_digest(digest) == bytes(expected)  # RFC 6979 on both sides
    receipt = sign_receipt(
        key,
        request_sha256=bytes.fromhex(
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        ),
        response_sha256=bytes.fromhex(
            "920e5591b811bf1bd16faa41037aebddda98a2a15f1a1d468e04c23122733e77"
        ),
        model="m",
        response_id="r1",
        timestamp=1700000000,
        measurement_id=bytes(range(32)),
    )
    assert receipt.signature == VECTOR_SIGNATURE
    verify_receipt(
        receipt,
        b"{}",
        b'{"id":"r1"}',
        expected_signer=key.address,
        expected_measurement=bytes(range(32)),
    )


@pytest.mark.parametrize("digest", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_sign_digest_takes_exactly_32_bytes(digest: object) -> None:
    with pytest.raises(SigningKeyError):
        SigningKey.generate().sign_digest(digest)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [bytes(32), N.to_bytes(32, "big"), (N + 1).to_bytes(32, "big"), b"\x01" * 31, b"\xff" * 32],
)
def test_out_of_range_scalars_rejected(raw: bytes) -> None:
    with pytest.raises(SigningKeyError):
        SigningKey.from_private_bytes(raw)


def test_generate_rejection_samples(monkeypatch: pytest.MonkeyPatch) -> None:

    draws = iter([bytes(32), N.to_bytes(32, "big"), b"\xff" * 32, (5).to_bytes(32, "big")])
    monkeypatch.setattr(secrets, "token_bytes", lambda n: next(draws))
    assert (
        SigningKey.generate().address
        == SigningKey.from_private_bytes((5).to_bytes(32, "big")).address
    )
    monkeypatch.setattr(secrets, "token_bytes", lambda n: bytes(32))
    with pytest.raises(SigningKeyError, match="out-of-range"):
        SigningKey.generate()


def test_no_key_material_in_repr_or_pickle() -> None:
    key = SigningKey.from_private_bytes(VECTOR_KEY)
    text = repr(key) + str(key)
    assert VECTOR_KEY.hex() not in text and key.address_hex in text
    with pytest.raises(TypeError):
        pickle.dumps(key)
    public = {name for name in dir(key) if not name.startswith("_")}
    # sealed_with hands the scalar to a sealing function only (the cluster key seals it).
    assert public == {
        "address",
        "address_hex",
        "sign_digest",
        "generate",
        "from_private_bytes",
        "sealed_with",
    }


def _raw_scalar(state: Path) -> bytes:
    blob = (signing_dir(state) / KEY_FILE).read_bytes()
    return InsecureDevSealer().unseal(blob, SEALING_LABEL)


def test_prepare_generates_seals_and_reuses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    state = tmp_path / "state"
    sealer = InsecureDevSealer()
    address = prepare_signing_key(state, sealer).address
    d = signing_dir(state)
    key_file, address_file = d / KEY_FILE, d / ADDRESS_FILE
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(address_file.stat().st_mode) == 0o644
    assert address_file.read_text() == "0x" + address.hex() + "\n"
    # Sealed: the file is a sealed blob, not the scalar (nor its hex).
    raw = _raw_scalar(state)
    blob = key_file.read_bytes()
    assert len(raw) == 32 and raw not in blob and raw.hex().encode() not in blob
    assert blob.startswith(b"TPSEAL1\n")
    assert SigningKey.from_private_bytes(raw).address == address
    # Restart: the same key, the file untouched; workers load the same key.
    assert prepare_signing_key(state, sealer).address == address
    assert key_file.read_bytes() == blob
    assert load_signing_key(state, sealer).address == address
    # The address file is for operators: rewritten from the key, never trusted.
    address_file.write_text("0x" + "11" * 20 + "\n")
    assert prepare_signing_key(state, sealer).address == address
    assert address_file.read_text() == "0x" + address.hex() + "\n"
    # Never logged: the address is, the key is not.
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert "0x" + address.hex() in logs
    assert raw.hex() not in logs and raw.hex().upper() not in logs


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "other-sealer", "other-label", "not-a-scalar", "huge"],
)
def test_unusable_key_fails_closed_and_is_kept(tmp_path: Path, damage: str) -> None:
    state = tmp_path / "state"
    sealer = InsecureDevSealer()
    prepare_signing_key(state, sealer)
    key_file = signing_dir(state) / KEY_FILE
    blob = key_file.read_bytes()
    if damage == "flip":
        bad = blob[:-1] + bytes([blob[-1] ^ 1])
    elif damage == "truncate":
        bad = blob[:20]
    elif damage == "other-sealer":
        bad = gramine_sealer(tmp_path, b"\x01" * 16).seal(_raw_scalar(state), SEALING_LABEL)
    elif damage == "other-label":
        bad = sealer.seal(_raw_scalar(state), "ratls.key.sealed")
    elif damage == "not-a-scalar":
        bad = sealer.seal(bytes(32), SEALING_LABEL)
    else:
        bad = b"TPSEAL1\n" + b"\x00" * 10_000
    key_file.write_bytes(bad)
    with pytest.raises(SigningKeyError) as ei:
        prepare_signing_key(state, sealer)
    assert str(key_file) in str(ei.value)
    with pytest.raises(SigningKeyError):
        load_signing_key(state, sealer)
    assert key_file.read_bytes() == bad  # never silently replaced


def test_new_sealing_key_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """A new build whose sealing key differs cannot read the old key: start-up stops and
    says how to rotate, instead of quietly making a new signer."""
    state = tmp_path / "state"
    old = gramine_sealer(tmp_path, b"\x01" * 16)
    address = prepare_signing_key(state, old).address
    with pytest.raises(SigningKeyError) as ei:
        prepare_signing_key(state, gramine_sealer(tmp_path, b"\x02" * 16))
    message = str(ei.value)
    assert "gramine-sgx-mrenclave" in message and "move this file away" in message
    assert isinstance(ei.value.__cause__, SealError)
    assert prepare_signing_key(state, old).address == address  # the old build still can


def test_load_without_prepare(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="no receipt signing key"):
        load_signing_key(tmp_path, InsecureDevSealer())


def test_each_state_dir_gets_its_own_key(tmp_path: Path) -> None:
    sealer = InsecureDevSealer()
    a = prepare_signing_key(tmp_path / "a", sealer).address
    b = prepare_signing_key(tmp_path / "b", sealer).address
    assert a != b


def test_local_account_and_raw_key_sign_identically() -> None:
    assert make(ACCOUNT) == make(KEY)


def test_bad_private_key_is_rejected() -> None:
    with pytest.raises(ReceiptError, match="32 bytes"):
        make(b"\x01" * 31)
    with pytest.raises(ReceiptError, match="not a valid secp256k1"):
        make(b"\x00" * 32)


def test_sign_receipt_rejects_a_key_of_the_wrong_type() -> None:
    for key in ("0x" + "11" * 32, 5, None, object()):
        with pytest.raises(ReceiptError, match="signing key must be"):
            sign_receipt(
                key,  # type: ignore[arg-type]
                request_sha256=bytes(32),
                response_sha256=bytes(32),
                model="",
                response_id="",
                timestamp=0,
                measurement_id=bytes(32),
            )


def test_shared_key_is_stored_sealed_under_its_own_label(tmp_path: Path) -> None:
    fleet = SigningKey.from_private_bytes(KEY)
    own = prepare_signing_key(tmp_path, InsecureDevSealer())
    store_shared_signing_key(tmp_path, InsecureDevSealer(), fleet)
    path = signing_dir(tmp_path) / SHARED_KEY_FILE
    blob = path.read_bytes()
    assert KEY not in blob and KEY.hex().encode() not in blob
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (signing_dir(tmp_path) / SHARED_ADDRESS_FILE).read_text() == fleet.address_hex + "\n"
    assert load_shared_signing_key(tmp_path, InsecureDevSealer()).address == fleet.address
    # The replica's own key is untouched, and neither file unseals as the other.
    assert load_signing_key(tmp_path, InsecureDevSealer()).address == own.address
    with pytest.raises(SealError):
        InsecureDevSealer().unseal(blob, SEALING_LABEL)
    own_blob = (signing_dir(tmp_path) / KEY_FILE).read_bytes()
    with pytest.raises(SealError):
        InsecureDevSealer().unseal(own_blob, SHARED_SEALING_LABEL)
    # Replaced when the fleet's key is.
    other = SigningKey.generate()
    store_shared_signing_key(tmp_path, InsecureDevSealer(), other)
    assert load_shared_signing_key(tmp_path, InsecureDevSealer()).address == other.address


def test_shared_key_missing_or_sealed_elsewhere_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="no shared receipt signing key"):
        load_shared_signing_key(tmp_path, InsecureDevSealer())
    store_shared_signing_key(tmp_path, InsecureDevSealer(), SigningKey.generate())
    with pytest.raises(SigningKeyError, match="does not unseal"):
        load_shared_signing_key(tmp_path, gramine_sealer(tmp_path, b"k" * 16))
