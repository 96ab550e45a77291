"""certmgr.attest.providers.gramine: the Gramine provider against a fake
``/dev/attestation`` with ``user_report_data`` and a FIFO ``quote``."""

from __future__ import annotations

import os
from pathlib import Path

from certmgr.attest.intel import parse_quote
from certmgr.attest.providers.gramine import GramineProvider
from certmgr.attest.simulated import build_simulated_quote
from tests.helpers.attest import DEV_KEY, fifo_server


def test_gramine(tmp_path: Path) -> None:
    dev = tmp_path / "attestation"
    dev.mkdir()
    (dev / "attestation_type").write_text("dcap")
    (dev / "user_report_data").write_bytes(b"")
    os.mkfifo(dev / "quote")
    t = fifo_server(
        dev / "quote",
        lambda: build_simulated_quote(DEV_KEY, (dev / "user_report_data").read_bytes()),
        rounds=1,
    )
    p = GramineProvider(str(dev))
    assert p.attestation_type() == "dcap"
    rd = bytes(range(64))
    assert parse_quote(p.get_quote(rd)).report_data == rd
    t.join(timeout=1)
