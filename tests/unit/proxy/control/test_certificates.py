"""Building certificate stores from configuration: files, encrypted keys, the development CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from certmgr.devca import renewal_due
from certmgr.keys import InsecureDevSealer
from certmgr.store import entry_from_files
from proxy.config import Config, ConfigError, loads
from proxy.control.certificates import next_renewal, prepare_certificates, served_certificates
from proxy.dataplane.certstore import build_store
from proxy.runtime import build_runtime
from proxy.tls import context_factory

PASSWORD_ENV = "TP_TEST_CERT_KEY_PASSWORD"


def _files(leaf: trustme.LeafCert, d: Path, password: bytes | None = None) -> tuple[Path, Path]:
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


def _config(cert: Path, key: Path, extra: str = "") -> Config:
    return loads(
        f'[[tls.certificates]]\ncert_file = "{cert}"\nkey_file = "{key}"\n{extra}\n'
        "[tls]\nstrict_sni = true"
    )


def test_build_store_with_encrypted_key_from_env(
    leaf: trustme.LeafCert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _files(leaf, tmp_path, password=b"hunter2")
    cfg = _config(cert, key, f'key_password_env = "{PASSWORD_ENV}"')
    monkeypatch.setenv(PASSWORD_ENV, "hunter2")
    store = build_store(cfg, InsecureDevSealer())
    assert store.strict_sni
    assert store.select("localhost") is not None
    assert store.select("other.test") is None

    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError) as info:
        build_store(cfg, InsecureDevSealer())
    assert info.value.field == "tls.certificates.key_password_env"

    monkeypatch.setenv(PASSWORD_ENV, "wrong")
    with pytest.raises(ValueError, match="cannot load private key"):
        build_store(cfg, InsecureDevSealer())


def test_openssl_never_reads_a_plaintext_key(leaf: trustme.LeafCert, tmp_path: Path) -> None:
    """The temporary file handed to load_cert_chain holds the key encrypted, even when the
    operator's key file is plaintext."""
    cert, key = _files(leaf, tmp_path)
    assert b"BEGIN PRIVATE KEY" in key.read_bytes() or b"BEGIN EC PRIVATE KEY" in key.read_bytes()
    handed: list[bytes] = []
    make = context_factory()

    class Spy(ssl.SSLContext):
        def load_cert_chain(self, certfile, keyfile=None, password=None):  # type: ignore[no-untyped-def]
            handed.append(Path(certfile).read_bytes())
            return super().load_cert_chain(certfile, keyfile, password)

    def factory() -> ssl.SSLContext:
        ctx = Spy(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = make().minimum_version
        return ctx

    entry = entry_from_files(str(cert), str(key), None, factory)
    assert entry.names == frozenset({"localhost", "127.0.0.1", "::1"})
    [pem] = handed
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in pem
    assert b"BEGIN PRIVATE KEY" not in pem and b"BEGIN EC PRIVATE KEY" not in pem
    assert key.read_bytes().split(b"-----")[2].strip() not in pem


def test_served_certificates_reads_public_files(leaf: trustme.LeafCert, tmp_path: Path) -> None:
    cert, key = _files(leaf, tmp_path)
    [(source, served)] = served_certificates(_config(cert, key))
    assert source == f"file:{cert}"
    assert served.public_bytes(serialization.Encoding.PEM) == leaf.cert_chain_pems[0].bytes()
    assert next_renewal(_config(cert, key)) is None


def test_dev_ca_prepare_then_build(tmp_path: Path) -> None:
    cfg = loads(f'state_dir = "{tmp_path}"\n[dev_ca]\nnames = ["localhost", "127.0.0.1"]')
    sealer = InsecureDevSealer()
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    store = build_store(cfg, sealer)
    [entry] = store.entries
    assert entry.source == "dev-ca"
    assert entry.names == frozenset({"localhost", "127.0.0.1"})
    assert store.select(None) is entry
    [(source, cert)] = served_certificates(cfg)
    assert source == "dev-ca"
    assert cert.not_valid_after_utc == entry.not_after
    due = next_renewal(cfg)
    assert due == renewal_due(cert)
    assert entry.not_before < due < entry.not_after
    # Preparing again while fresh keeps the same certificate.
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=sealer))
    assert served_certificates(cfg)[0][1] == cert


def test_prepare_is_a_no_op_with_configured_certificates(
    leaf: trustme.LeafCert, tmp_path: Path
) -> None:
    cert, key = _files(leaf, tmp_path)
    cfg = _config(cert, key).replace(state_dir=str(tmp_path / "state"))
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=InsecureDevSealer()))
    assert not (tmp_path / "state").exists()
