"""Receipts from a real ``teeproxy serve`` with two workers and the simulated TEE.

- the signer is the address bound in the attestation (the evidence endpoint's claims) and
  the receipt names the measurement the quote attests;
- receipts of streamed responses are found whichever worker the kernel hands the fetch to
  (with several workers the store lives in the supervisor);
- after a restart the same sealed key signs (an address registered on chain stays valid).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
from pathlib import Path

import aiohttp
import cbor2
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.attest.evidence import parse_evidence_json
from certmgr.attest.measurement import measurement_id
from certmgr.attest.quote import parse_evidence
from certmgr.receipts.format import Receipt
from certmgr.receipts.verify import verify_receipt
from proxy.dataplane.receipts import ID_HEADER, RECEIPT_HEADER
from tests.helpers.serve import Launch, Served, TLSFiles, serve, write_config

pytestmark = pytest.mark.slow


async def _json(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response({"id": f"cmpl-{len(body)}", "model": "m1", "choices": []})


async def _sse(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(3):
        await resp.write(f'data: {{"id":"s-{i}","model":"m2"}}\n\n'.encode())
        await asyncio.sleep(0.01)
    await resp.write_eof(b"data: [DONE]\n\n")
    return resp


@pytest.fixture
async def served(
    launch: Launch,
    tmp_path: Path,
    tls_files: TLSFiles,
    aiohttp_server: AiohttpServer,
) -> Served:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _sse)
    app.router.add_post("/v1/completions", _json)
    backend = await aiohttp_server(app)
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        backend=f"http://127.0.0.1:{backend.port}",
        tls=tls_files,
        extra='[attestation]\nprovider = "simulated"\n',
    )
    return await serve(launch, config)


async def _attested(served: Served, client_ssl: ssl.SSLContext) -> tuple[bytes, bytes]:
    """(signing address, measurement id) as the evidence endpoint attests them."""
    nonce = secrets.token_hex(16)
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{served.url}/.well-known/tee/attestation?nonce={nonce}", ssl=client_ssl) as r,
    ):
        assert r.status == 200
        evidence = parse_evidence_json(await r.read())
    # Interoperable RA-TLS claims: every value a byte string, ours CBOR-encoded inside.
    address = cbor2.loads(cbor2.loads(evidence.claims_bytes)["signing-address"])
    assert address == evidence.claims["signing-address"]
    assert address.startswith("0x") and len(address) == 42
    return bytes.fromhex(address[2:]), measurement_id(parse_evidence(evidence.quote).measurement)


async def test_receipts_verify_against_the_attested_signer_across_workers(
    served: Served, client_ssl: ssl.SSLContext
) -> None:
    signer, mid = await _attested(served, client_ssl)
    address_file = served.config.parent / "state" / "signing" / "address"
    stored = (await asyncio.to_thread(address_file.read_text)).strip()
    assert stored.lower() == "0x" + signer.hex()

    # Non-streaming: the receipt is in the response headers.
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        request = b'{"model":"m1","prompt":"x"}'
        async with s.post(f"{served.url}/v1/completions", data=request, ssl=client_ssl) as r:
            response = await r.read()
            receipt = Receipt.from_header(r.headers[RECEIPT_HEADER])
        verify_receipt(receipt, request, response, expected_signer=signer, expected_measurement=mid)
        assert receipt.response_id == f"cmpl-{len(request)}"

    # Streaming: 16 streams, each receipt fetched on a fresh connection (any worker).
    for i in range(16):
        request = json.dumps({"model": "m2", "stream": True, "n": i}).encode()
        async with (
            aiohttp.ClientSession(auto_decompress=False) as s,
            s.post(f"{served.url}/v1/chat/completions", data=request, ssl=client_ssl) as r,
        ):
            rid = r.headers[ID_HEADER]
            response = await r.read()
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{served.url}/v1/receipts/{rid}", ssl=client_ssl) as got,
        ):
            assert got.status == 200, (i, await got.text())
            receipt = Receipt.from_json(await got.read())
        verify_receipt(receipt, request, response, expected_signer=signer, expected_measurement=mid)
        assert (receipt.model, receipt.response_id) == ("m2", "s-0")


async def test_restart_keeps_the_signing_key(
    launch: Launch,
    served: Served,
    client_ssl: ssl.SSLContext,
) -> None:
    before, _ = await _attested(served, client_ssl)
    await asyncio.to_thread(served.process.stop)
    again = await serve(launch, served.config)
    after, _ = await _attested(again, client_ssl)
    assert after == before
