"""certmgr.attest.oyster: the Oyster attestation server client against a loopback server
that serves a REAL Nitro document (tests/data/nitro) at ``/attestation/raw`` and ``/hex``.

No new signed document can be made here, so the server cannot embed what the client asks
for: a caller-chosen nonce is sent and shown to be refused when absent (the failure path),
and the checks that pass are those the real document satisfies (its user_data is 0^64)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from certmgr.attest.nitro import parse_nitro_document
from certmgr.attest.nitro_verify import NitroPolicy
from certmgr.attest.oyster import (
    decode_oyster_body,
    fetch_oyster,
    oyster_image_id,
    oyster_target,
    verify_oyster,
)
from certmgr.attest.verify import Reason, VerifyOptions
from certmgr.errors import VerifyError
from tests.helpers.nitro import NSM_QVL, nitro_vector, pinned_time

DOC = nitro_vector(NSM_QVL[0])
AT = pinned_time(NSM_QVL) + 1


@pytest.fixture
def oyster_server() -> Iterator[tuple[str, list[dict[str, list[str]]]]]:
    seen: list[dict[str, list[str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            seen.append(parse_qs(parts.query))
            if parts.path == "/attestation/raw":
                body, ctype = DOC, "application/octet-stream"
            elif parts.path == "/attestation/hex":
                body, ctype = DOC.hex().encode(), "text/plain; charset=utf-8"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


OPTS = VerifyOptions(any_measurement=True, nitro=NitroPolicy(max_age=300))


def test_targets_and_bodies() -> None:
    assert oyster_target() == "/attestation/raw"
    t = oyster_target("hex", public_key=b"\x01", user_data=b"\x02\x03", nonce=b"\xff")
    assert t == "/attestation/hex?public_key=01&user_data=0203&nonce=ff"
    with pytest.raises(VerifyError):
        oyster_target("json")
    assert decode_oyster_body(DOC.hex().encode() + b"\n", "hex") == DOC
    with pytest.raises(VerifyError, match="not hex"):
        decode_oyster_body(b"zz", "hex")
    with pytest.raises(VerifyError, match="too large"):
        decode_oyster_body(b"0" * 40000, "hex")


def test_image_id_is_oysters_definition() -> None:
    doc = parse_nitro_document(DOC)
    import hashlib

    want = hashlib.sha256(
        bytes.fromhex("00010007") + doc.pcrs[0] + doc.pcrs[1] + doc.pcrs[2] + bytes(48)
    ).digest()
    assert oyster_image_id(doc) == want


def test_real_document_fetched_and_verified(
    oyster_server: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, seen = oyster_server
    for encoding in ("raw", "hex"):
        raw = decode_oyster_body(fetch_oyster(url, oyster_target(encoding)), encoding)
        v = verify_oyster(raw, OPTS, now=AT)
        assert v.trusted and v.tee == "nitro" and not v.binding
        assert len(v.details["oyster_image_id"]) == 64
    assert seen == [{}, {}]
    bound = verify_oyster(DOC, OPTS, now=AT, user_data=bytes(64))
    assert bound.trusted and bound.binding


def test_asked_for_values_that_the_document_lacks_are_refused(
    oyster_server: tuple[str, list[dict[str, list[str]]]],
) -> None:
    url, seen = oyster_server
    nonce = bytes(range(32))
    raw = fetch_oyster(url, oyster_target(nonce=nonce))
    assert seen[-1] == {"nonce": [nonce.hex()]}
    v = verify_oyster(raw, OPTS, now=AT, nonce=nonce)
    assert v.reasons == (Reason.NONCE,) and not v.trusted and not v.binding
    assert verify_oyster(raw, OPTS, now=AT, public_key=b"k").reasons == (Reason.PUBLIC_KEY,)
    assert verify_oyster(raw, OPTS, now=AT, user_data=b"\x01" * 64).reasons == (Reason.REPORT_DATA,)
    stale = verify_oyster(raw, OPTS, now=AT + 600)
    assert stale.reasons == (Reason.NITRO_TIMESTAMP,)


def test_fetch_errors(oyster_server: tuple[str, list[dict[str, list[str]]]]) -> None:
    url, _ = oyster_server
    with pytest.raises(VerifyError, match="HTTP 404"):
        fetch_oyster(url, "/nothing")
    with pytest.raises(VerifyError, match="http://"):
        fetch_oyster("https://127.0.0.1:1", "/attestation/raw")
    assert verify_oyster(b"\x04\x00", OPTS, now=AT).reasons == (Reason.QUOTE_MALFORMED,)


def test_cli_verify_oyster(
    oyster_server: tuple[str, list[dict[str, list[str]]]], capsys: pytest.CaptureFixture[str]
) -> None:
    from proxy.cli.main import main

    url, seen = oyster_server
    base = ["verify-oyster", url, "--at", str(int(AT)), "--any-measurement", "--json"]
    assert main(base) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trusted"] and doc["pcr0"].startswith("5cb70295") and doc["url"] == url
    assert main([*base, "--format", "hex", "--user-data", "00" * 64]) == 0
    assert json.loads(capsys.readouterr().out)["binding"] is True
    assert main([*base, "--fresh-nonce"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [f["reason"] for f in doc["failures"]] == ["nonce"]
    assert len(seen[-1]["nonce"][0]) == 64
    assert main(["verify-oyster", url, "--at", str(int(AT) + 600), "--any-measurement"]) == 1
    assert "nitro-timestamp" in capsys.readouterr().out  # default max age: 300 s
    assert main(["verify-oyster", "ftp://x", "--any-measurement"]) == 2
