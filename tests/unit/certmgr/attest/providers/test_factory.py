"""certmgr.attest.providers.factory: which provider is detected and made, never
falling back to the simulated one, and the measurement id of this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from certmgr.attest.providers.base import self_measurement
from certmgr.attest.providers.factory import ProviderSettings, detect_provider, make_provider
from certmgr.attest.providers.gramine import GramineProvider
from certmgr.errors import QuoteProviderError
from certmgr.keys import InsecureDevSealer


def test_detection_order(tmp_path: Path) -> None:
    tsm, gram = tmp_path / "tsm", tmp_path / "att"
    assert detect_provider(str(tsm), str(gram), str(tmp_path / "s")) == "none"
    gram.mkdir()
    (gram / "quote").write_bytes(b"")
    assert detect_provider(str(tsm), str(gram), str(tmp_path / "s")) == "gramine"
    tsm.mkdir()
    assert detect_provider(str(tsm), str(gram), str(tmp_path / "s")) == "configfs-tsm"
    settings = ProviderSettings(configfs_root=str(tmp_path / "x"), gramine_dir=str(gram))
    assert isinstance(make_provider("auto", settings), GramineProvider)
    none = ProviderSettings(
        configfs_root="/nonexistent", gramine_dir="/nonexistent", dstack_socket="/nonexistent"
    )
    assert make_provider("auto", none) is None  # never falls back to simulated


def test_self_measurement_id(tmp_path: Path) -> None:
    from certmgr.attest.measurement import measurement_id
    from certmgr.attest.providers.factory import self_measurement_id
    from certmgr.attest.providers.factory import self_measurement_id as with_settings

    sim = ProviderSettings(
        simulated_key_file=str(tmp_path / "k.sealed"), simulated_sealer=InsecureDevSealer()
    )
    mid = with_settings("simulated", sim)
    p = make_provider("simulated", sim)
    assert p is not None
    assert mid == measurement_id(self_measurement(p))
    nothing = ProviderSettings(
        configfs_root=str(tmp_path / "a"),
        gramine_dir=str(tmp_path / "b"),
        dstack_socket=str(tmp_path / "c"),
    )
    with pytest.raises(QuoteProviderError):
        with_settings("auto", nothing)
    if detect_provider() == "none":  # this machine has no TEE: the convenience fails closed
        with pytest.raises(OSError):
            self_measurement_id()
