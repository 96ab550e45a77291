"""proxy.dataplane.certstore: the worker's certificate store built from the
configuration and the prepared state: encrypted key files, an expired RA-TLS certificate."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trustme

from certmgr.keys import InsecureDevSealer
from proxy.config import ConfigError
from proxy.dataplane.certstore import build_store
from tests.helpers.certs import files_config, leaf_files
from tests.helpers.simulated_tee import prepare_simulated

PASSWORD_ENV = "TP_TEST_CERT_KEY_PASSWORD"


def test_build_store_with_encrypted_key_from_env(
    leaf: trustme.LeafCert, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = leaf_files(leaf, tmp_path, password=b"hunter2")
    cfg = files_config(cert, key, f'key_password_env = "{PASSWORD_ENV}"')
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


def test_expired_ratls_does_not_break_the_store(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg, _ = prepare_simulated(state, "cert_lifetime = 600.0\n")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    store = build_store(cfg, InsecureDevSealer(), now=later)
    assert [e.source for e in store.entries] == ["dev-ca"]
