"""Signed receipts through the forwarder: what a client receives verifies.

A real loopback backend (aiohttp) speaks the OpenAI shapes; the proxy runs in process with
a receipt issuer holding a real secp256k1 key. Every test checks the receipt against the
exact bytes the client sent and received, with ``certmgr.receipts.verify.verify_receipt``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from prometheus_client import REGISTRY

from certmgr.errors import ReceiptError
from certmgr.receipts.format import Receipt
from certmgr.receipts.signing import SigningKey
from certmgr.receipts.verify import verify_receipt
from proxy.dataplane.receipt_store import LocalStore, ReceiptStore
from proxy.dataplane.receipts import ID_HEADER, RECEIPT_HEADER, ReceiptIssuer
from tests.helpers.proxies import ProxyFactory, RunningProxy, make_config

MID = hashlib.sha256(b"test measurement").digest()
KEY = SigningKey.from_private_bytes(hashlib.sha256(b"receipt test key").digest())
COMPLETION = {
    "id": "chatcmpl-42",
    "object": "chat.completion",
    "model": "llama-test",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}],
}


def _issuer(extra: str = "", clock: Callable[[], float] | None = None) -> ReceiptIssuer:
    cfg = make_config("http://127.0.0.1:1", extra).receipts
    store = LocalStore(ReceiptStore(cfg.ttl, cfg.max_entries))
    if clock is None:
        return ReceiptIssuer(cfg, KEY, MID, store)
    return ReceiptIssuer(cfg, KEY, MID, store, clock=clock)


async def _json_backend(request: web.Request) -> web.Response:
    body = await request.read()
    doc = dict(COMPLETION, echo_sha256=hashlib.sha256(body).hexdigest())
    return web.Response(body=json.dumps(doc).encode(), content_type="application/json")


async def _sse_backend(request: web.Request) -> web.StreamResponse:
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(5):
        chunk = {"id": "chatcmpl-7", "model": "llama-test", "choices": [{"delta": f"t{i}"}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.05)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


Start = Callable[..., Awaitable[tuple[RunningProxy, ReceiptIssuer]]]


@pytest.fixture
async def start(aiohttp_server: AiohttpServer, proxy_factory: ProxyFactory) -> Start:
    async def go(
        routes: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]],
        extra: str = "",
    ) -> tuple[RunningProxy, ReceiptIssuer]:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        backend = await aiohttp_server(app)
        issuer = await asyncio.to_thread(_issuer, extra)
        proxy = await proxy_factory(f"http://127.0.0.1:{backend.port}", extra, receipts=issuer)
        return proxy, issuer

    return go


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        yield s


async def _count(delivery: str) -> float:
    value = await asyncio.to_thread(
        REGISTRY.get_sample_value, "teeproxy_receipts_total", {"delivery": delivery}
    )
    return value or 0.0


def _check(receipt: Receipt, request: bytes, response: bytes) -> None:
    verify_receipt(
        receipt, request, response, expected_signer=KEY.address, expected_measurement=MID
    )


async def test_non_streaming_response_carries_a_receipt_that_verifies(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, _ = await start({"/v1/chat/completions": _json_backend})
    signed = await _count("header")
    request = json.dumps({"model": "llama-test", "messages": [{"role": "user", "content": "hi"}]})
    async with client.post(
        f"{proxy.url}/v1/chat/completions", data=request.encode(), ssl=client_ssl
    ) as resp:
        assert resp.status == 200
        response = await resp.read()
        header = resp.headers[RECEIPT_HEADER]
        assert ID_HEADER not in resp.headers
    receipt = Receipt.from_header(header)
    _check(receipt, request.encode(), response)
    assert receipt.model == "llama-test"
    assert receipt.response_id == "chatcmpl-42"
    assert receipt.measurement_id == MID
    # The backend saw exactly the bytes the receipt's request hash covers.
    assert json.loads(response)["echo_sha256"] == receipt.request_sha256.hex()
    assert await _count("header") == signed + 1


async def test_one_flipped_byte_anywhere_fails_verification(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, _ = await start({"/v1/completions": _json_backend})
    request = b'{"model":"llama-test","prompt":"2+2="}'
    async with client.post(f"{proxy.url}/v1/completions", data=request, ssl=client_ssl) as resp:
        response = await resp.read()
        header = resp.headers[RECEIPT_HEADER]
    receipt = Receipt.from_header(header)
    _check(receipt, request, response)

    def flip(data: bytes, i: int) -> bytes:
        return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

    with pytest.raises(ReceiptError, match="request body"):
        _check(receipt, flip(request, len(request) // 2), response)
    with pytest.raises(ReceiptError, match="response body"):
        _check(receipt, request, flip(response, len(response) - 2))
    doc = json.loads(receipt.to_json())
    for key in ("model", "responseId"):
        tampered = dict(doc, **{key: doc[key] + "x"})
        with pytest.raises(ReceiptError, match="signature"):
            _check(Receipt.from_json(json.dumps(tampered).encode()), request, response)
    sig = bytes.fromhex(doc["signature"][2:])
    tampered = dict(doc, signature="0x" + flip(sig, 10).hex())
    with pytest.raises(ReceiptError, match="signature"):
        _check(Receipt.from_json(json.dumps(tampered).encode()), request, response)
    tampered = dict(doc, timestamp=doc["timestamp"] + 1)
    with pytest.raises(ReceiptError, match="signature"):
        _check(Receipt.from_json(json.dumps(tampered).encode()), request, response)


async def test_streamed_request_body_is_hashed_as_forwarded(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, _ = await start({"/v1/embeddings": _json_backend})
    parts = [b'{"model":"e","input":"', b"x" * 300_000, b'"}']

    async def body() -> AsyncIterator[bytes]:
        for p in parts:
            yield p
            await asyncio.sleep(0.01)

    async with client.post(f"{proxy.url}/v1/embeddings", data=body(), ssl=client_ssl) as resp:
        response = await resp.read()
        receipt = Receipt.from_header(resp.headers[RECEIPT_HEADER])
    _check(receipt, b"".join(parts), response)


async def test_sse_stream_gets_an_id_first_and_the_receipt_after_the_last_byte(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, issuer = await start({"/v1/chat/completions": _sse_backend})
    request = b'{"model":"llama-test","stream":true,"messages":[]}'
    received = bytearray()
    async with client.post(
        f"{proxy.url}/v1/chat/completions", data=request, ssl=client_ssl
    ) as resp:
        assert resp.status == 200
        rid = resp.headers[ID_HEADER]
        assert RECEIPT_HEADER not in resp.headers
        received += await resp.content.readany()  # the first event is here; the rest is not
        async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as early:
            assert early.status == 409
            assert early.headers["Retry-After"] == "1"
        received += await resp.read()
    assert received.endswith(b"data: [DONE]\n\n")
    async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as got:
        assert got.status == 200
        assert got.headers["Content-Type"] == "application/json"
        receipt = Receipt.from_json(await got.read())
    _check(receipt, request, bytes(received))
    assert (receipt.model, receipt.response_id) == ("llama-test", "chatcmpl-7")
    assert not issuer.pending


async def test_large_non_streaming_response_is_streamed_with_an_id(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    big = json.dumps({"id": "emb-1", "model": "e", "data": ["x" * 200_000]}).encode()

    async def backend(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=big, content_type="application/json")

    proxy, _ = await start({"/v1/embeddings": backend}, "[receipts]\nmax_buffered_body = 65536")
    async with client.post(f"{proxy.url}/v1/embeddings", data=b"{}", ssl=client_ssl) as resp:
        rid = resp.headers[ID_HEADER]
        assert RECEIPT_HEADER not in resp.headers
        response = await resp.read()
    assert response == big
    async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as got:
        receipt = Receipt.from_json(await got.read())
    _check(receipt, b"{}", response)
    assert (receipt.model, receipt.response_id) == ("e", "emb-1")


async def test_only_successful_posts_to_configured_routes_are_signed(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    async def not_found(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"error": "no such model"}, status=404)

    proxy, issuer = await start(
        {"/v1/chat/completions": not_found, "/v1/models": _json_backend, "/x": _json_backend}
    )
    cases = [
        ("POST", "/v1/chat/completions"),  # 404 from the backend
        ("GET", "/v1/models"),
        ("POST", "/v1/models"),
        ("POST", "/x"),
        ("POST", "/v1/chat/completions/"),  # not the configured path
    ]
    for method, path in cases:
        async with client.request(method, f"{proxy.url}{path}", data=b"{}", ssl=client_ssl) as r:
            await r.read()
            assert RECEIPT_HEADER not in r.headers, (method, path)
            assert ID_HEADER not in r.headers, (method, path)
    assert len(issuer.store.store) == 0  # type: ignore[attr-defined]


async def test_routes_are_configurable(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, _ = await start(
        {"/v1/chat/completions": _json_backend, "/generate": _json_backend},
        '[receipts]\nroutes = ["/generate"]',
    )
    async with client.post(f"{proxy.url}/generate", data=b"{}", ssl=client_ssl) as r:
        Receipt.from_header(r.headers[RECEIPT_HEADER])
    async with client.post(f"{proxy.url}/v1/chat/completions", data=b"{}", ssl=client_ssl) as r:
        assert RECEIPT_HEADER not in r.headers


async def test_a_stream_that_breaks_is_never_signed(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    async def breaks(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"id":"c","model":"m"}\n\n')
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the backend dies mid-stream
        return resp

    proxy, issuer = await start({"/v1/chat/completions": breaks})
    incomplete, stored = await _count("incomplete"), await _count("stored")
    async with client.post(f"{proxy.url}/v1/chat/completions", data=b"{}", ssl=client_ssl) as r:
        rid = r.headers[ID_HEADER]
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    for _ in range(50):  # the tombstone is written by a task after the abort
        if rid not in issuer.pending:
            break
        await asyncio.sleep(0.02)
    async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as got:
        assert got.status == 410
        assert (await got.json())["error"]["type"] == "receipt_unavailable"
    assert (await _count("incomplete"), await _count("stored")) == (incomplete + 1, stored)


async def test_receipt_endpoint_rejects_bad_and_unknown_ids(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, _ = await start({"/v1/chat/completions": _json_backend})
    for rid, status in [
        ("A" * 22, 404),
        ("short", 400),
        ("A" * 21 + "!", 400),
        ("A" * 23, 400),
        ("..%2F..%2Fetc%2Fpasswd", 400),
        ("%41" * 22, 404),  # percent-decoded first: a well-formed id
    ]:
        async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as got:
            assert got.status == status, rid
    async with client.post(f"{proxy.url}/v1/receipts/{'A' * 22}", ssl=client_ssl) as got:
        assert got.status == 405


async def test_receipt_expires_after_its_ttl(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    proxy, _ = await start({"/v1/chat/completions": _sse_backend}, "[receipts]\nttl = 1.0")
    async with client.post(f"{proxy.url}/v1/chat/completions", data=b"{}", ssl=client_ssl) as r:
        rid = r.headers[ID_HEADER]
        await r.read()
    async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as got:
        assert got.status == 200
    await asyncio.sleep(1.1)
    async with client.get(f"{proxy.url}/v1/receipts/{rid}", ssl=client_ssl) as got:
        assert got.status == 404


async def test_receipts_off_forwards_the_receipt_path(
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    client: aiohttp.ClientSession,
    client_ssl: ssl.SSLContext,
) -> None:
    async def backend(request: web.Request) -> web.Response:
        return web.Response(text="backend " + request.path)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", backend)
    server = await aiohttp_server(app)
    proxy = await proxy_factory(f"http://127.0.0.1:{server.port}")
    async with client.get(f"{proxy.url}/v1/receipts/{'A' * 22}", ssl=client_ssl) as got:
        assert await got.text() == f"backend /v1/receipts/{'A' * 22}"
    async with client.post(f"{proxy.url}/v1/chat/completions", data=b"{}", ssl=client_ssl) as r:
        assert RECEIPT_HEADER not in r.headers


async def test_backend_cannot_supply_receipt_headers(
    start: Start, client: aiohttp.ClientSession, client_ssl: ssl.SSLContext
) -> None:
    forged = "A" * 400

    async def backend(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(COMPLETION, headers={RECEIPT_HEADER: forged, ID_HEADER: "B" * 22})

    proxy, _ = await start({"/v1/chat/completions": backend, "/v1/models": backend})
    async with client.get(f"{proxy.url}/v1/models", ssl=client_ssl) as r:  # not signed
        assert RECEIPT_HEADER not in r.headers
        assert ID_HEADER not in r.headers
    async with client.post(f"{proxy.url}/v1/chat/completions", data=b"{}", ssl=client_ssl) as r:
        assert r.headers.getall(RECEIPT_HEADER) != [forged]
        assert len(r.headers.getall(RECEIPT_HEADER)) == 1
        assert ID_HEADER not in r.headers
        _check(Receipt.from_header(r.headers[RECEIPT_HEADER]), b"{}", await r.read())
