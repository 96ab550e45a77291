"""proxy.runtime: the sealer the [sealing] section selects, failing closed when it is
unavailable."""

from __future__ import annotations

from pathlib import Path

import pytest

from certmgr.sealing import make_sealer
from proxy.config import loads
from proxy.errors import ConfigError
from proxy.runtime import sealer_for


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
