"""proxy.control.certificates: preparing the certificates the configuration names
(the development CA), what is served, when to renew, checking that they can be served."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from certmgr.devca import renewal_due
from certmgr.keys import InsecureDevSealer
from proxy.config import ConfigError, loads
from proxy.control.certificates import (
    check_certificates,
    next_renewal,
    prepare_certificates,
    served_certificates,
)
from proxy.dataplane.certstore import build_store
from proxy.runtime import build_runtime
from tests.helpers.certs import files_config, leaf_files


def test_served_certificates_reads_public_files(leaf: trustme.LeafCert, tmp_path: Path) -> None:
    cert, key = leaf_files(leaf, tmp_path)
    [(source, served)] = served_certificates(files_config(cert, key))
    assert source == f"file:{cert}"
    assert served.public_bytes(serialization.Encoding.PEM) == leaf.cert_chain_pems[0].bytes()
    assert next_renewal(files_config(cert, key)) is None


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
    cert, key = leaf_files(leaf, tmp_path)
    cfg = files_config(cert, key).replace(state_dir=str(tmp_path / "state"))
    prepare_certificates(cfg, build_runtime(cfg, prepare=True, sealer=InsecureDevSealer()))
    assert not (tmp_path / "state").exists()


def test_check_certificates_turns_unservable_certs_into_config_errors(tmp_path: Any) -> None:
    cfg = loads(
        f'[[tls.certificates]]\ncert_file = "{tmp_path}/nope.pem"\nkey_file = "{tmp_path}/k.pem"'
    )
    with pytest.raises(ConfigError) as info:
        check_certificates(cfg, None)
    assert info.value.field == "tls.certificates"
    assert "nope.pem" in info.value.message
