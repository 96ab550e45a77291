"""certmgr.attest.providers.dstack: the dstack provider against a unix-socket HTTP
server speaking the guest agent's ``POST /GetQuote``."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from pathlib import Path

import pytest

from certmgr.attest.intel import parse_quote
from certmgr.attest.providers.dstack import DstackProvider
from certmgr.attest.providers.factory import detect_provider
from certmgr.attest.simulated import build_simulated_quote
from certmgr.errors import QuoteProviderError
from tests.helpers.attest import DEV_KEY


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
