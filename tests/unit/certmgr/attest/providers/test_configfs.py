"""certmgr.attest.providers.configfs: the configfs-tsm provider against a fake report
tree.

A directory shaped like ``/sys/kernel/config/tsm/report/<entry>`` whose ``outblob`` is a
FIFO served by a thread that reads ``inblob`` (as the kernel does when outblob is read) and
bumps ``generation``; for ``sev_guest`` also ``auxblob``, the certificate table of the
same report (:class:`tests.helpers.tsm.FakeTsm`, with the real dstack SEV-SNP report and
its real VCEK/ASK and AMD's Milan ARK).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.providers.base import get_evidence
from certmgr.attest.providers.configfs import MAX_AUXBLOB, ConfigfsTsmProvider
from certmgr.attest.providers.gate import QuoteGate
from certmgr.attest.simulated import build_simulated_quote
from certmgr.attest.snp_verify import collateral_from_cert_table
from certmgr.errors import QuoteProviderError
from tests.helpers.attest import DEV_KEY, fifo_server
from tests.helpers.snp import dstack_cert_table, dstack_report
from tests.helpers.tsm import FakeTsm


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


# -- auxblob: the SEV-SNP certificate table of the same report -----------------------------


@pytest.fixture
def snp_tsm(tmp_path: Path) -> Iterator[FakeTsm]:
    """A ``sev_guest`` entry answering with the real dstack report and its real certificate
    table, page-padded as the kernel hands it out."""
    tsm = FakeTsm(
        tmp_path / "tsm" / "report",
        "sev_guest",
        lambda rd: (dstack_report(), dstack_cert_table(pad_to=16384)),
    )
    tsm.add_pid(os.getpid())
    yield tsm
    tsm.close()


def test_sev_guest_evidence_carries_the_certificate_table(snp_tsm: FakeTsm) -> None:
    p = ConfigfsTsmProvider(str(snp_tsm.root), timeout=5)
    assert p.backend() == "sev_guest"
    ev = p.get_evidence(b"\x05" * 64)
    assert ev.quote == dstack_report()
    assert len(ev.auxblob) == 16384 and ev.auxblob.rstrip(b"\x00") == dstack_cert_table()
    assert snp_tsm.requests == [b"\x05" * 64]
    coll = collateral_from_cert_table(ev.auxblob)
    assert coll.vek and coll.ask and coll.ark
    # Through the generic entry point and the gate as well; get_quote keeps working.
    assert get_evidence(p, b"\x06" * 64).auxblob == ev.auxblob
    assert QuoteGate(p).evidence_sync(b"\x07" * 64).quote == dstack_report()
    assert p.get_quote(b"\x08" * 64) == dstack_report()
    assert (snp_tsm.root / f"teeproxy-{os.getpid()}" / "generation").read_text() == "4\n"


def test_tdx_guest_has_no_auxblob(tmp_path: Path) -> None:
    tsm = FakeTsm(
        tmp_path / "tsm" / "report",
        "tdx_guest",
        lambda rd: (build_simulated_quote(DEV_KEY, rd), b""),
    )
    tsm.add_pid(os.getpid())
    try:
        ev = ConfigfsTsmProvider(str(tsm.root), timeout=5).get_evidence(b"\x09" * 64)
    finally:
        tsm.close()
    assert parse_quote(ev.quote).report_data == b"\x09" * 64
    assert ev.auxblob == b""
    assert not (tsm.root / f"teeproxy-{os.getpid()}" / "auxblob").exists()


def test_oversized_auxblob_is_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tsm = FakeTsm(
        tmp_path / "tsm" / "report",
        "sev_guest",
        lambda rd: (dstack_report(), dstack_cert_table().ljust(MAX_AUXBLOB + 1, b"\x00")),
    )
    tsm.add_pid(os.getpid())
    try:
        with caplog.at_level(logging.WARNING, logger="teeproxy.attest"):
            ev = ConfigfsTsmProvider(str(tsm.root), timeout=5).get_evidence(bytes(64))
    finally:
        tsm.close()
    assert ev.quote == dstack_report() and ev.auxblob == b""
    assert "auxblob larger than" in caplog.text
