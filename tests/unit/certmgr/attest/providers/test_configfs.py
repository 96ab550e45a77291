"""certmgr.attest.providers.configfs: the configfs-tsm provider against a fake report
tree.

A directory shaped like ``/sys/kernel/config/tsm/report/<entry>`` whose ``outblob`` is a
FIFO served by a thread that reads ``inblob`` (as the kernel does when outblob is read) and
bumps ``generation``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.providers.configfs import ConfigfsTsmProvider
from certmgr.attest.simulated import build_simulated_quote
from certmgr.errors import QuoteProviderError
from tests.helpers.attest import DEV_KEY, fifo_server


@pytest.fixture
def configfs(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "tsm" / "report"
    entry = root / f"teeproxy-{os.getpid()}"
    entry.mkdir(parents=True)
    (entry / "provider").write_text("tdx_guest\n")
    (entry / "generation").write_text("0\n")
    os.mkfifo(entry / "outblob")

    def respond() -> bytes:
        rd = (entry / "inblob").read_bytes()
        gen = int((entry / "generation").read_text())
        (entry / "generation").write_text(f"{gen + 1}\n")
        return build_simulated_quote(DEV_KEY, rd)

    t = fifo_server(entry / "outblob", respond, rounds=2)
    yield root
    t.join(timeout=0.1)


def test_configfs_tsm(configfs: Path) -> None:
    p = ConfigfsTsmProvider(str(configfs), timeout=5)
    assert p.backend() == "tdx_guest"
    for rd in (b"\x01" * 64, b"\x02" * 64):
        q = parse_quote(p.get_quote(rd))
        assert q.report_data == rd
    assert (configfs / f"teeproxy-{os.getpid()}" / "generation").read_text() == "2\n"
    with pytest.raises(QuoteProviderError, match="64 bytes"):
        p.get_quote(b"short")


def test_configfs_tsm_missing_root(tmp_path: Path) -> None:
    with pytest.raises(QuoteProviderError, match="cannot create"):
        ConfigfsTsmProvider(str(tmp_path / "absent"), timeout=1).get_quote(bytes(64))


def test_configfs_tsm_detects_a_racing_writer(tmp_path: Path) -> None:
    """Another writer between our write and our read moves ``generation`` by two: retry."""
    root = tmp_path / "tsm" / "report"
    entry = root / f"teeproxy-{os.getpid()}"
    entry.mkdir(parents=True)
    (entry / "provider").write_text("tdx_guest\n")
    (entry / "generation").write_text("0\n")
    os.mkfifo(entry / "outblob")
    rounds: list[bytes] = []

    def respond() -> bytes:
        rd = (entry / "inblob").read_bytes()
        gen = int((entry / "generation").read_text())
        raced = not rounds  # the first answer is over someone else's inblob
        rounds.append(rd)
        (entry / "generation").write_text(f"{gen + (2 if raced else 1)}\n")
        return build_simulated_quote(DEV_KEY, b"\xee" * 64 if raced else rd)

    t = fifo_server(entry / "outblob", respond, rounds=2)
    rd = b"\x42" * 64
    assert parse_quote(ConfigfsTsmProvider(str(root), timeout=5).get_quote(rd)).report_data == rd
    assert rounds == [rd, rd]
    t.join(timeout=1)
