"""End to end: receipts from ``teeproxy serve`` checked by ``teeproxy receipt verify --attest``.

Real processes on 127.0.0.1: the proxy (simulated TEE, a loopback aiohttp backend) signs
receipts with its sealed secp256k1 key; the client command verifies the proxy's RA-TLS
certificate and fresh evidence, takes the attested signing address and measurement id as
its expectations, and checks the receipt against the exact bytes it sent and received.
A receipt signed by any other key is refused even though it is well-formed and
self-consistent; a corrupt sealed key stops ``serve`` with a clear message.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.attest.ratls_store import ratls_dir
from certmgr.keys import InsecureDevSealer
from certmgr.receipts.signing import (
    KEY_FILE,
    SigningKey,
    prepare_signing_key,
    sign_receipt,
    signing_dir,
)
from tests.helpers.serve import REPO, Launch, Served, serve, write_config

pytestmark = pytest.mark.slow


NAME = "attestation.teeproxy.invalid"
REQUEST = b'{"model":"m1","messages":[{"role":"user","content":"hi"}]}'


async def _completion(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    if b'"stream":true' in body:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"id":"s-1","model":"m1"}\n\n')
        await resp.write_eof(b"data: [DONE]\n\n")
        return resp
    return web.json_response({"id": f"cmpl-{len(body)}", "model": "m1", "choices": []})


@pytest.fixture
async def served(launch: Launch, tmp_path: Path, aiohttp_server: AiohttpServer) -> Served:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completion)
    backend = await aiohttp_server(app)
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        backend=f"http://127.0.0.1:{backend.port}",
        tls=None,  # the development CA's certificate for the public name
        workers=1,
        extra=f'[attestation]\nprovider = "simulated"\nserver_name = "{NAME}"\n',
    )
    return await serve(launch, config, workers=1)


def _cli(*args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else {}
    except ValueError:
        doc = {"text": r.stdout}
    return r.returncode, doc, r.stderr


def _state(served: Served) -> Path:
    return served.config.parent / "state"


def _attest_args(served: Served, *extra: str) -> list[str]:
    dev_key = str(ratls_dir(_state(served)) / "dev-attestation-key.pub.pem")
    return [
        "--attest",
        f"https://127.0.0.1:{served.port}",
        "--trust-dev-key",
        dev_key,
        "--any-measurement",
        "--json",
        *extra,
    ]


async def _post(served: Served, body: bytes) -> tuple[bytes, dict[str, str]]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(f"https://127.0.0.1:{served.port}/v1/chat/completions", data=body, ssl=False) as r,
    ):
        assert r.status == 200
        return await r.read(), dict(r.headers)


async def _get(served: Served, path: str) -> bytes:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"https://127.0.0.1:{served.port}{path}", ssl=False) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.read()


async def test_receipt_from_the_proxy_verifies_against_its_attestation(
    served: Served, tmp_path: Path
) -> None:
    address = (await asyncio.to_thread((signing_dir(_state(served)) / "address").read_text)).strip()
    response, headers = await _post(served, REQUEST)
    req_file, resp_file = tmp_path / "req", tmp_path / "resp"
    await asyncio.to_thread(req_file.write_bytes, REQUEST)
    await asyncio.to_thread(resp_file.write_bytes, response)
    files = ["receipt", "verify", "--request", str(req_file), "--response", str(resp_file)]
    header = headers["Teeproxy-Receipt"]

    rc, doc, err = await asyncio.to_thread(
        _cli, *files, "--receipt-header", header, *_attest_args(served)
    )
    assert rc == 0, (doc, err)
    assert doc["valid"] is True and doc["signer_source"] == "attestation"
    # The expectations are the attested ones: the address bound in the RA-TLS certificate
    # and the evidence (the same as the operator's address file), and the measurement.
    assert doc["expected_signer"] == address == doc["attestation"]["signing_address"]
    assert doc["attestation"]["evidence"]["signing_address"] == address
    assert doc["expected_measurement"] == doc["attestation"]["measurement_id"]
    assert doc["receipt"]["signer"] == address

    # The same receipt against one changed response byte: refused with the reason.
    await asyncio.to_thread(resp_file.write_bytes, response[:-1] + b"X")
    rc, doc, _ = await asyncio.to_thread(
        _cli, *files, "--receipt-header", header, *_attest_args(served)
    )
    assert rc == 1
    assert doc["reason"] == "response body does not match the receipt's response hash"

    # A streamed response: its receipt is fetched as JSON once the stream has ended.
    stream_request = b'{"model":"m1","stream":true}'
    streamed, headers = await _post(served, stream_request)
    receipt_json = await _get(served, f"/v1/receipts/{headers['Teeproxy-Receipt-Id']}")
    receipt_file = tmp_path / "receipt.json"
    await asyncio.to_thread(req_file.write_bytes, stream_request)
    await asyncio.to_thread(resp_file.write_bytes, streamed)
    await asyncio.to_thread(receipt_file.write_bytes, receipt_json)
    rc, doc, err = await asyncio.to_thread(
        _cli, *files, "--receipt", str(receipt_file), *_attest_args(served)
    )
    assert rc == 0, (doc, err)
    assert doc["receipt"]["model"] == "m1" and doc["receipt"]["responseId"] == "s-1"


async def test_receipt_from_another_key_is_refused(served: Served, tmp_path: Path) -> None:
    req_file, resp_file = tmp_path / "req", tmp_path / "resp"
    response = b'{"id":"cmpl-x"}'
    await asyncio.to_thread(req_file.write_bytes, REQUEST)
    await asyncio.to_thread(resp_file.write_bytes, response)
    files = ["receipt", "verify", "--request", str(req_file), "--response", str(resp_file)]

    # Learn the attested measurement, then forge a receipt with it under another key: it is
    # well-formed and its signature recovers to its own signer, but that is not the TEE's.
    rc, doc, err = await asyncio.to_thread(
        _cli, *files, "--receipt-header", _forged(bytes(32)), *_attest_args(served)
    )
    assert rc == 1, err
    mid = bytes.fromhex(doc["expected_measurement"][2:])
    attested = doc["expected_signer"]
    assert attested == doc["attestation"]["signing_address"] != _OTHER.address_hex
    assert doc["reason"] == "receipt measurement id is not the expected measurement"
    rc, doc, _ = await asyncio.to_thread(
        _cli, *files, "--receipt-header", _forged(mid), *_attest_args(served)
    )
    assert rc == 1
    assert doc["reason"] == "receipt signer is not the expected signer"
    assert doc["expected_signer"] == attested and doc["receipt"]["signer"] == _OTHER.address_hex

    # --measurement must agree with the attested one.
    rc, doc, _ = await asyncio.to_thread(
        _cli,
        *files,
        "--receipt-header",
        _forged(mid),
        *_attest_args(served, "--measurement", "0x" + "ee" * 32),
    )
    assert rc == 1 and doc["reason"].startswith("attested measurement 0x")

    # An attestation that is not trusted (the development key not named) proves nothing.
    rc, doc, _ = await asyncio.to_thread(
        _cli,
        *files,
        "--receipt-header",
        _forged(mid),
        "--attest",
        f"https://127.0.0.1:{served.port}",
        "--any-measurement",
        "--json",
    )
    assert rc == 1
    assert doc["reason"] == (
        f"attestation of https://127.0.0.1:{served.port} not trusted: simulated-untrusted"
    )


_OTHER = SigningKey.generate()


def _forged(mid: bytes) -> str:
    import hashlib

    return sign_receipt(
        _OTHER,
        request_sha256=hashlib.sha256(REQUEST).digest(),
        response_sha256=hashlib.sha256(b'{"id":"cmpl-x"}').digest(),
        model="m1",
        response_id="cmpl-x",
        timestamp=1700000000,
        measurement_id=mid,
    ).to_header()


async def test_corrupt_signing_key_stops_serve(
    launch: Launch,
    tmp_path: Path,
) -> None:
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        backend="http://127.0.0.1:9",
        tls=None,
        workers=1,
        extra='[attestation]\nprovider = "simulated"\n',
    )
    state = tmp_path / "state"
    await asyncio.to_thread(prepare_signing_key, state, InsecureDevSealer())
    key_file = signing_dir(state) / KEY_FILE
    blob = bytearray(await asyncio.to_thread(key_file.read_bytes))
    blob[-5] ^= 0x80
    await asyncio.to_thread(key_file.write_bytes, bytes(blob))
    p = await launch(["serve", "--config", str(config)])
    rc = await p.wait_exit(60)
    assert rc == 2, p.output[-2000:]
    assert "config error: receipts.enabled: receipt signing key:" in p.output
    assert str(key_file) in p.output and "move this file away" in p.output
    assert "teeproxy serving" not in p.output
    assert await asyncio.to_thread(key_file.read_bytes) == bytes(blob)
