"""certmgr.sealing: Gramine sealing-key files and the dstack GetKey agent, through fakes that
expose the real interfaces (a 16-byte key file; HTTP/1.1 JSON on a unix socket)."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from certmgr.errors import SealError, SealingUnavailable
from certmgr.sealing import DstackSealer, GramineSealer


def test_gramine_roundtrip_and_binding(tmp_path: Path) -> None:
    key = tmp_path / "_sgx_mrenclave"
    key.write_bytes(bytes(range(16)))
    s = GramineSealer(str(key))
    assert s.provider == "gramine-sgx-mrenclave"
    blob = s.seal(b"secret key bytes", "cert.key.sealed")
    assert b"secret key bytes" not in blob
    assert GramineSealer(str(key)).unseal(blob, "cert.key.sealed") == b"secret key bytes"
    # Another enclave (another measurement -> another sealing key) cannot unseal it.
    other = tmp_path / "other" / "_sgx_mrenclave"
    other.parent.mkdir()
    other.write_bytes(bytes(range(1, 17)))
    with pytest.raises(SealError, match="failed authentication"):
        GramineSealer(str(other)).unseal(blob, "cert.key.sealed")


def test_gramine_unavailable_or_malformed(tmp_path: Path) -> None:
    with pytest.raises(SealingUnavailable, match="_sgx_mrenclave"):
        GramineSealer(str(tmp_path / "_sgx_mrenclave"))
    short = tmp_path / "_sgx_mrsigner"
    short.write_bytes(b"x" * 15)
    with pytest.raises(SealingUnavailable, match="expected 16 bytes"):
        GramineSealer(str(short))


class _Agent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    requests_seen: list[tuple[str, dict[str, object]]]
    status = 200
    answer: bytes | None = None


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Agent

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests_seen.append((self.path, body))
        path = str(body.get("path", ""))
        # Deterministic per path, like the agent's per-app key derivation.
        out = (
            self.server.answer
            or json.dumps(
                {"key": (path.encode() * 32)[:32].hex(), "signature_chain": ["00"]}
            ).encode()
        )
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *_args: object) -> None:
        return None


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[str, _Agent]]:
    sock = str(tmp_path / "dstack.sock")
    srv = _Agent(sock, _Handler)
    srv.requests_seen = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield sock, srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def test_dstack_getkey_roundtrip(agent: tuple[str, _Agent]) -> None:
    sock, srv = agent
    s = DstackSealer(sock, "teeproxy/sealing")
    assert srv.requests_seen == [("/GetKey", {"path": "teeproxy/sealing", "purpose": "seal"})]
    blob = s.seal(b"k", "account.key.sealed")
    assert DstackSealer(sock, "teeproxy/sealing").unseal(blob, "account.key.sealed") == b"k"
    with pytest.raises(SealError):
        DstackSealer(sock, "other/path").unseal(blob, "account.key.sealed")


@pytest.mark.parametrize(
    ("status", "answer", "match"),
    [
        (500, b"{}", "HTTP 500"),
        (200, b"not json", "malformed"),
        (200, b'{"key": "abcd"}', "too short"),
        (200, b'{"key": "' + b"a" * 70000 + b'"}', "too large"),
    ],
)
def test_dstack_bad_answers_fail_closed(
    agent: tuple[str, _Agent], status: int, answer: bytes, match: str
) -> None:
    sock, srv = agent
    srv.status, srv.answer = status, answer
    with pytest.raises(SealingUnavailable, match=match):
        DstackSealer(sock)


def test_dstack_agent_absent(tmp_path: Path) -> None:
    with pytest.raises(SealingUnavailable, match="dstack GetKey"):
        DstackSealer(str(tmp_path / "missing.sock"), timeout=1.0)
