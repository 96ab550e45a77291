"""certmgr.keys: sealing, sealed key storage and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from certmgr import keys
from certmgr.errors import SealError
from certmgr.keys import (
    InsecureDevSealer,
    atomic_write,
    encrypted_pem,
    generate_p256,
    load_sealed_key,
    spki_sha256,
    store_sealed_key,
)

MAGIC = b"TPSEAL1\n"


@pytest.fixture
def sealer() -> InsecureDevSealer:
    return InsecureDevSealer()


def test_seal_unseal_roundtrip(sealer: InsecureDevSealer) -> None:
    for plaintext in (b"", b"x", b"-----BEGIN PRIVATE KEY-----" + os.urandom(5000)):
        blob = sealer.seal(plaintext, "dev-ca/root.key")
        assert blob.startswith(MAGIC)
        assert sealer.unseal(blob, "dev-ca/root.key") == plaintext
    assert b"PRIVATE KEY" not in blob and plaintext[27:100] not in blob


def test_blob_names_its_provider_and_uses_fresh_nonces(sealer: InsecureDevSealer) -> None:
    a = sealer.seal(b"same", "l")
    b = sealer.seal(b"same", "l")
    assert a != b  # random nonce per seal
    assert a[len(MAGIC)] == len(b"insecure-development")
    assert a[len(MAGIC) + 1 :].startswith(b"insecure-development")
    assert sealer.provider == InsecureDevSealer.PROVIDER == "insecure-development"


def test_tampered_blob_fails(sealer: InsecureDevSealer) -> None:
    blob = bytearray(sealer.seal(b"secret key bytes", "label"))
    for i in (len(blob) - 1, len(blob) - 20, len(MAGIC) + 1 + len(sealer.provider) + 3):
        tampered = bytearray(blob)
        tampered[i] ^= 0x01
        with pytest.raises(SealError):
            sealer.unseal(bytes(tampered), "label")


def test_wrong_label_fails(sealer: InsecureDevSealer) -> None:
    blob = sealer.seal(b"secret", "leaf.key.sealed")
    with pytest.raises(SealError, match="authentication"):
        sealer.unseal(blob, "root.key.sealed")


def test_wrong_provider_fails(sealer: InsecureDevSealer) -> None:
    other = keys._AESGCMSealer(b"\x01" * 32, "tdx-sealing")
    blob = other.seal(b"secret", "label")
    with pytest.raises(SealError, match="provider"):
        sealer.unseal(blob, "label")
    # Same provider name, different key: authentication fails.
    impostor = keys._AESGCMSealer(b"\x02" * 32, InsecureDevSealer.PROVIDER)
    with pytest.raises(SealError):
        sealer.unseal(impostor.seal(b"secret", "label"), "label")


@pytest.mark.parametrize("keep", [0, 3, len(MAGIC), len(MAGIC) + 1, len(MAGIC) + 10, -1, -16])
def test_truncated_blob_fails(sealer: InsecureDevSealer, keep: int) -> None:
    blob = sealer.seal(b"secret", "label")
    with pytest.raises(SealError):
        sealer.unseal(blob[:keep], "label")


def test_provider_only_blob_is_truncated(sealer: InsecureDevSealer) -> None:
    p = sealer.provider.encode()
    with pytest.raises(SealError, match="truncated"):
        sealer.unseal(MAGIC + bytes([len(p)]) + p + b"\0" * 20, "label")


def test_not_a_blob_fails(sealer: InsecureDevSealer) -> None:
    with pytest.raises(SealError, match="not a sealed blob"):
        sealer.unseal(b"-----BEGIN PRIVATE KEY-----\n", "label")


def test_oversized_blob_fails_before_decrypting(sealer: InsecureDevSealer) -> None:
    blob = sealer.seal(b"x" * (64 * 1024), "label")
    assert len(blob) > 64 * 1024
    with pytest.raises(SealError, match="too large"):
        sealer.unseal(blob, "label")


def test_sealer_key_and_provider_checked() -> None:
    with pytest.raises(ValueError):
        keys._AESGCMSealer(b"short", "p")
    with pytest.raises(ValueError):
        keys._AESGCMSealer(b"\0" * 32, "")
    with pytest.raises(ValueError):
        keys._AESGCMSealer(b"\0" * 32, "p" * 256)


# -- atomic writes ---------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_mode_0600_and_no_temp_files(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        target = tmp_path / "sub" / "secret.bin"
        atomic_write(target, b"one")
        assert target.read_bytes() == b"one"
        assert _mode(target) == 0o600
        assert _mode(target.parent) == 0o700
        # Overwriting a wider file narrows it.
        target.chmod(0o644)
        atomic_write(target, b"two")
        assert target.read_bytes() == b"two"
        assert _mode(target) == 0o600
        atomic_write(tmp_path / "public.pem", b"pub", mode=0o644)
        assert _mode(tmp_path / "public.pem") == 0o644
    finally:
        os.umask(old_umask)
    assert sorted(p.name for p in target.parent.iterdir()) == ["secret.bin"]


def test_atomic_write_failure_keeps_old_file_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "f"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


# -- sealed key storage ----------------------------------------------------------------------


def test_store_sealed_key_has_no_plaintext_and_roundtrips(
    tmp_path: Path, sealer: InsecureDevSealer
) -> None:
    key = generate_p256()
    path = tmp_path / "leaf.key.sealed"
    store_sealed_key(path, key, sealer)
    data = path.read_bytes()
    der = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    raw_scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert data.startswith(MAGIC)
    assert der not in data
    assert raw_scalar not in data
    assert b"PRIVATE KEY" not in data
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["leaf.key.sealed"]

    loaded = load_sealed_key(path, sealer)
    assert spki_sha256(loaded.public_key()) == spki_sha256(key.public_key())
    assert loaded.private_numbers() == key.private_numbers()


def test_sealed_key_is_bound_to_its_file_name(tmp_path: Path, sealer: InsecureDevSealer) -> None:
    """The label is the file name: a leaf key copied over the root key's file is refused."""
    path = tmp_path / "leaf.key.sealed"
    store_sealed_key(path, generate_p256(), sealer)
    swapped = tmp_path / "root.key.sealed"
    swapped.write_bytes(path.read_bytes())
    with pytest.raises(SealError):
        load_sealed_key(swapped, sealer)


def test_encrypted_pem_is_never_plaintext() -> None:
    key = generate_p256()
    pem, password = encrypted_pem(key)
    assert b"ENCRYPTED PRIVATE KEY" in pem
    assert len(password) == 32
    with pytest.raises((TypeError, ValueError)):
        serialization.load_pem_private_key(pem, password=None)
    loaded = serialization.load_pem_private_key(pem, password=password)
    assert loaded.public_key() == key.public_key()
    assert encrypted_pem(key)[1] != password


def test_spki_sha256_is_stable_per_key() -> None:
    k1, k2 = generate_p256(), generate_p256()
    assert spki_sha256(k1.public_key()) == spki_sha256(k1.public_key())
    assert spki_sha256(k1.public_key()) != spki_sha256(k2.public_key())
    assert len(spki_sha256(k1.public_key())) == 32
