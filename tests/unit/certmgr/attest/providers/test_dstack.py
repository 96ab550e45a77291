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


def _alith_agent_handler() -> type[http.server.BaseHTTPRequestHandler]:
    """A guest agent whose TD measured app-id / compose-hash / instance-id into RTMR3 and
    answers GetQuote with a SIMULATED quote, the event log and the vm_config, as the real
    one's ``GetQuoteResponse``."""
    from certmgr.attest.dstack import RUNTIME_EVENT_TYPE, event_digest, replay_rtmr

    compose = bytes(range(32))
    runtime = [("app-id", compose[:20]), ("compose-hash", compose), ("instance-id", b"\x09" * 20)]
    rtmr3 = replay_rtmr([event_digest(n, p) for n, p in runtime])
    log = [
        {
            "imr": 3,
            "event_type": RUNTIME_EVENT_TYPE,
            "digest": event_digest(n, p).hex(),
            "event": n,
            "event_payload": p.hex(),
        }
        for n, p in runtime
    ]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            rd = bytes.fromhex(
                json.loads(self.rfile.read(int(self.headers["Content-Length"])))["report_data"]
            )
            quote = build_simulated_quote(
                DEV_KEY,
                rd,
                rtmrs=(bytes(48),) * 3 + (rtmr3,),
                mr_config_id=b"\x01" + compose + bytes(15),
            )
            out = json.dumps(
                {
                    "quote": quote.hex(),
                    "event_log": json.dumps(log),
                    "report_data": rd.hex(),
                    "vm_config": '{"os_image_hash":"ab"}',
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def test_alith_flow_client_report_data_quoted_by_the_app_and_verified(tmp_path: Path) -> None:
    """LazAI Alith's use of dstack: a client picks 64 bytes of report_data, the app asks its
    guest agent (the unix socket, GetQuote) for a quote over exactly them and hands the
    answer back; the client verifies quote, RTMR3 replay, the app and the binding."""
    import secrets

    from certmgr.attest.verify import Reason, VerifyOptions, verify_dstack_evidence
    from tests.helpers.attest import DEV_KEY_RAW

    sock = str(tmp_path / "dstack.sock")
    server = _UnixHTTPServer(sock, _alith_agent_handler())
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        client_rd = secrets.token_bytes(64)
        answer = DstackProvider(sock, timeout=5).get_quote_answer(client_rd)  # the app's side
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)
    opts = VerifyOptions(trusted_dev_keys=(DEV_KEY_RAW,), any_measurement=True)
    v = verify_dstack_evidence(answer, None, opts, now=0, report_data=client_rd)
    doc = v.to_json()
    assert v.trusted and v.binding and doc["status"] == "SimulatedTrustedDevKey"
    assert doc["dstack"]["compose_hash"] == bytes(range(32)).hex()
    assert doc["dstack"]["rtmr3_replayed"] == doc["rt_mr3"]
    other = verify_dstack_evidence(answer, None, opts, now=0, report_data=secrets.token_bytes(64))
    assert Reason.REPORT_DATA in other.reasons and not other.trusted  # a replayed answer
    untrusted = verify_dstack_evidence(answer, None, VerifyOptions(any_measurement=True), now=0)
    assert Reason.SIMULATED_UNTRUSTED in untrusted.reasons
