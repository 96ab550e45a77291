"""Certificate files on disk from trustme leaves, and a config that serves them."""

from __future__ import annotations

from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

from proxy.config import Config, loads


def leaf_files(leaf: trustme.LeafCert, d: Path, password: bytes | None = None) -> tuple[Path, Path]:
    """The leaf's chain and key as PEM files in ``d`` (the key encrypted if ``password``)."""
    cert, key = d / "cert.pem", d / "key.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    if password is None:
        key.write_bytes(leaf.private_key_pem.bytes())
    else:
        k = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
        key.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password),
            )
        )
    return cert, key


def files_config(cert: Path, key: Path, extra: str = "") -> Config:
    """A config serving those files with strict SNI; ``extra`` goes into the certificate entry."""
    return loads(
        f'[[tls.certificates]]\ncert_file = "{cert}"\nkey_file = "{key}"\n{extra}\n'
        "[tls]\nstrict_sni = true"
    )
