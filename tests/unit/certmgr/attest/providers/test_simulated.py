"""certmgr.attest.providers.simulated: the simulated provider's key is stored sealed
and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from certmgr.attest.measurement import TeeType
from certmgr.attest.providers.base import self_measurement
from certmgr.attest.providers.factory import ProviderSettings, make_provider
from certmgr.attest.providers.simulated import SimulatedProvider, public_key_pem_path
from certmgr.attest.simulated import SIMULATED_MR_TD
from certmgr.errors import QuoteProviderError
from certmgr.keys import InsecureDevSealer


def test_simulated_provider_key_is_sealed_and_reused(tmp_path: Path) -> None:
    key_file = tmp_path / "attestation" / "dev-attestation-key.sealed"
    settings = ProviderSettings(
        simulated_key_file=str(key_file), simulated_sealer=InsecureDevSealer()
    )
    p1 = make_provider("simulated", settings)
    assert isinstance(p1, SimulatedProvider)
    assert b"PRIVATE" not in key_file.read_bytes()
    assert key_file.read_bytes().startswith(b"TPSEAL1")
    pub = public_key_pem_path(key_file)
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    p2 = make_provider("simulated", settings)
    assert isinstance(p2, SimulatedProvider)
    assert p1.public_key.public_numbers() == p2.public_key.public_numbers()
    m = self_measurement(p2)
    assert m.tee is TeeType.TDX and m.mr_td == SIMULATED_MR_TD
    with pytest.raises(QuoteProviderError):
        make_provider("simulated", ProviderSettings())
