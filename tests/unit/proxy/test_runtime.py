"""proxy.runtime: the sealer the [sealing] section selects, failing closed when it is
unavailable."""

from __future__ import annotations

from pathlib import Path

import pytest

from certmgr.keys import InsecureDevSealer
from certmgr.receipts.signing import SigningKey, prepare_signing_key, store_shared_signing_key
from certmgr.sealing import make_sealer
from proxy.config import loads
from proxy.errors import ConfigError
from proxy.runtime import reload_signing_key, sealer_for, shares_signing_key


def test_config_selects_provider_and_fails_closed(tmp_path: Path) -> None:
    key = tmp_path / "_sgx_mrsigner"
    key.write_bytes(b"\x07" * 16)
    cfg = loads(f'[sealing]\nprovider = "gramine"\ngramine_key_path = "{key}"\n')
    assert sealer_for(cfg).provider == "gramine-sgx-mrsigner"
    assert sealer_for(loads("")).provider == "insecure-development"
    missing = loads(f'[sealing]\nprovider = "gramine"\ngramine_key_path = "{tmp_path}/none"\n')
    with pytest.raises(ConfigError) as e:
        sealer_for(missing)
    assert e.value.field == "sealing.provider"
    with pytest.raises(ConfigError) as e2:
        loads('[sealing]\nprovider = "tpm"\n')
    assert e2.value.field == "sealing.provider"
    with pytest.raises(ValueError, match="unknown sealing provider"):
        make_sealer("tpm")


def test_workers_load_the_fleets_key_in_shared_mode_and_their_own_otherwise(
    tmp_path: Path,
) -> None:
    cluster = (
        f'state_dir = "{tmp_path}"\n[attestation]\nprovider = "simulated"\n'
        "[governance]\nmode = 'monitor'\nrpc_urls = [\"http://127.0.0.1:8545\"]\n"
        'contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"\n'
        '[cluster]\nenabled = true\nname = "f"\nmember_id = "r1"\n'
        'etcd_endpoints = ["http://127.0.0.1:2379"]\n'
    )
    sealer = InsecureDevSealer()
    own = prepare_signing_key(tmp_path, sealer)
    fleet = SigningKey.generate()
    shared_cfg = loads(cluster + "shared_signing_key = true\n")
    assert shares_signing_key(shared_cfg) and not shares_signing_key(loads(cluster))
    assert reload_signing_key(shared_cfg, sealer) is None  # not handed over yet: no receipts
    store_shared_signing_key(tmp_path, sealer, fleet)
    got = reload_signing_key(shared_cfg, sealer)
    assert got is not None and got.address == fleet.address
    mine = reload_signing_key(loads(cluster), sealer)
    assert mine is not None and mine.address == own.address
