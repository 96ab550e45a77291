"""certmgr.tee: each real provider driven through a fake that exposes the real interface.

- configfs-tsm: a directory tree shaped like ``/sys/kernel/config/tsm/report/<entry>`` whose
  ``outblob`` is a FIFO served by a thread that reads ``inblob`` (as the kernel does when
  outblob is read) and bumps ``generation``;
- Gramine: a fake ``/dev/attestation`` with ``user_report_data`` and a FIFO ``quote``;
- dstack: a unix-socket HTTP server speaking the guest agent's ``POST /GetQuote``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import socketserver
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.measurement import TeeType
from certmgr.attest.providers.base import self_measurement
from certmgr.attest.providers.configfs import ConfigfsTsmProvider
from certmgr.attest.providers.dstack import DstackProvider
from certmgr.attest.providers.factory import ProviderSettings, detect_provider, make_provider
from certmgr.attest.providers.gate import QuoteGate
from certmgr.attest.providers.gramine import GramineProvider
from certmgr.attest.providers.simulated import SimulatedProvider, public_key_pem_path
from certmgr.attest.simulated import SIMULATED_MR_TD, build_simulated_quote
from certmgr.errors import QuoteProviderError, QuoteRateLimited
from certmgr.keys import InsecureDevSealer
from tests.unit.certmgr.attest_helpers import DEV_KEY


def _fifo_server(fifo: Path, respond: object, rounds: int) -> threading.Thread:
    """Serve ``rounds`` reads of ``fifo``: each time write ``respond()`` and close."""

    def run() -> None:
        for i in range(rounds):
            with fifo.open("wb") as f:  # blocks until the provider opens it for reading
                f.write(respond())  # type: ignore[operator]
                # A fresh FIFO for the next round, swapped in before this reader sees EOF:
                # reopening the same FIFO could join the still-open previous reader.
                tmp = fifo.with_name(f".{fifo.name}.{i}")
                os.mkfifo(tmp)
                os.replace(tmp, fifo)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


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

    t = _fifo_server(entry / "outblob", respond, rounds=2)
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


def test_gramine(tmp_path: Path) -> None:
    dev = tmp_path / "attestation"
    dev.mkdir()
    (dev / "attestation_type").write_text("dcap")
    (dev / "user_report_data").write_bytes(b"")
    os.mkfifo(dev / "quote")
    t = _fifo_server(
        dev / "quote",
        lambda: build_simulated_quote(DEV_KEY, (dev / "user_report_data").read_bytes()),
        rounds=1,
    )
    p = GramineProvider(str(dev))
    assert p.attestation_type() == "dcap"
    rd = bytes(range(64))
    assert parse_quote(p.get_quote(rd)).report_data == rd
    t.join(timeout=1)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _dstack_handler(requests: list[dict[str, str]]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            doc = json.loads(body)
            requests.append({"path": self.path, **doc})
            if self.path != "/GetQuote":
                self.send_response(404)
                self.end_headers()
                return
            quote = build_simulated_quote(DEV_KEY, bytes.fromhex(doc["report_data"]))
            out = json.dumps({"quote": quote.hex(), "event_log": "[]"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def test_dstack(tmp_path: Path) -> None:
    sock = str(tmp_path / "dstack.sock")
    requests: list[dict[str, str]] = []
    server = _UnixHTTPServer(sock, _dstack_handler(requests))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        p = DstackProvider(sock, timeout=5)
        rd = b"\x05" * 64
        assert parse_quote(p.get_quote(rd)).report_data == rd
        assert requests == [{"path": "/GetQuote", "report_data": rd.hex()}]
        assert p.last_event_log == "[]"
        assert detect_provider(str(tmp_path / "no"), str(tmp_path / "no"), sock) == "dstack"
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)
    with pytest.raises(QuoteProviderError, match="dstack"):
        DstackProvider(sock, timeout=1).get_quote(bytes(64))


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


class _BusyProvider:
    """Fails with EBUSY when called concurrently, like real quote generation."""

    def __init__(self) -> None:
        self.active = 0
        self.calls = 0

    @property
    def name(self) -> str:
        return "busy"

    def get_quote(self, report_data: bytes) -> bytes:
        self.active += 1
        try:
            if self.active > 1:
                raise QuoteProviderError("EBUSY")
            self.calls += 1
            time.sleep(0.01)
            return build_simulated_quote(DEV_KEY, report_data)
        finally:
            self.active -= 1


async def test_gate_serializes_and_rate_limits() -> None:
    busy = _BusyProvider()
    gate = QuoteGate(busy, rate=0.001, burst=5)
    results = await asyncio.gather(
        *(gate.quote(bytes([i]) * 64) for i in range(7)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, bytes)]
    limited = [r for r in results if isinstance(r, QuoteRateLimited)]
    assert len(ok) == 5 and len(limited) == 2
    assert busy.calls == 5
    # Mixed with a thread (the supervisor path) it is still one at a time.
    gate2 = QuoteGate(busy, rate=1000, burst=10)
    await asyncio.gather(
        asyncio.to_thread(gate2.quote_sync, bytes(64)),
        gate2.quote(bytes(64)),
        gate2.quote(bytes(64)),
    )
    assert busy.calls == 8


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

    t = _fifo_server(entry / "outblob", respond, rounds=2)
    rd = b"\x42" * 64
    assert parse_quote(ConfigfsTsmProvider(str(root), timeout=5).get_quote(rd)).report_data == rd
    assert rounds == [rd, rd]
    t.join(timeout=1)


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
