"""proxy.cli.demo_backend: the built-in OpenAI-compatible demo backend."""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.cli.demo_backend import BYTES_CAP, DemoBackendConfig, make_app, start_demo_backend

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello there world"}]
REPO = Path(__file__).resolve().parents[4]


@pytest.fixture
async def client(aiohttp_client: MakeClient) -> Client:
    return await aiohttp_client(make_app(DemoBackendConfig(tokens_per_second=0)))


async def read_events(resp: aiohttp.ClientResponse) -> list[tuple[float, str]]:
    """Read an SSE body; return (client monotonic arrival time, data) per event."""
    events = []
    async for line in resp.content:
        if line.startswith(b"data: "):
            events.append((time.monotonic(), line[6:].decode().rstrip("\n")))
        else:
            assert line == b"\n"
    return events


def assert_error(body: dict[str, Any], param: str | None) -> None:
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] == param
    assert err["code"] is None


async def test_health(client: Client) -> None:
    resp = await client.get("/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_models_list_shape(client: Client) -> None:
    resp = await client.get("/v1/models")
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert set(model) == {"id", "object", "created", "owned_by"}
    assert model["id"] == "teeproxy-demo"
    assert model["object"] == "model"
    assert model["owned_by"] == "teeproxy"
    assert isinstance(model["created"], int) and model["created"] > 1_600_000_000


async def test_chat_completion_shape_and_usage(client: Client) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
    ]
    resp = await client.post(CHAT, json={"messages": messages, "max_tokens": 7})
    assert resp.status == 200
    body = await resp.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-") + 8
    assert body["object"] == "chat.completion"
    assert body["model"] == "teeproxy-demo"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"] == {
        "role": "assistant",
        "content": "You said: hello there You said: hello ",
    }
    assert choice["finish_reason"] == "length"
    # prompt = words of every message: 2 + 2 + 0 + 2
    assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 7, "total_tokens": 13}


async def test_chat_completion_default_length_stops(aiohttp_client: MakeClient) -> None:
    cfg = DemoBackendConfig(tokens_per_second=0, max_tokens_default=5, model="m")
    client = await aiohttp_client(make_app(cfg))
    resp = await client.post(CHAT, json={"messages": HELLO, "model": "anything"})
    body = await resp.json()
    assert body["model"] == "m"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "You said: hello there world "
    assert body["usage"]["completion_tokens"] == 5
    # ids are random per completion
    again = await (await client.post(CHAT, json={"messages": HELLO})).json()
    assert again["id"] != body["id"]


async def test_non_streaming_takes_generation_time(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app(DemoBackendConfig(tokens_per_second=100)))
    start = time.monotonic()
    resp = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 20})
    assert resp.status == 200
    await resp.json()
    assert time.monotonic() - start >= 0.18


async def test_legacy_completion(client: Client) -> None:
    resp = await client.post("/v1/completions", json={"prompt": "say hi", "max_tokens": 3})
    assert resp.status == 200
    body = await resp.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    [choice] = body["choices"]
    assert choice["text"] == "You said: say "
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


async def test_legacy_completion_streaming(client: Client) -> None:
    payload = {"prompt": ["a", "b"], "max_tokens": 4, "stream": True}
    resp = await client.post("/v1/completions", json=payload)
    assert resp.status == 200
    events = [data for _, data in await read_events(resp)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks) == "You said: a b "
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_streaming_chunks(client: Client) -> None:
    payload = {
        "messages": HELLO,
        "max_tokens": 6,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = await client.post(CHAT, json=payload)
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    events = [data for _, data in await read_events(resp)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"].startswith("chatcmpl-")
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["model"] == "teeproxy-demo" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    content = chunks[1:7]
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    text = "".join(c["choices"][0]["delta"]["content"] for c in content)
    assert text == "You said: hello there world You "
    final = chunks[7]
    assert final["choices"][0]["delta"] == {}
    assert final["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks[:8])
    usage = chunks[8]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 6, "total_tokens": 9}
    assert len(chunks) == 9


async def test_streaming_without_usage(client: Client) -> None:
    resp = await client.post(CHAT, json={"messages": HELLO, "max_tokens": 2, "stream": True})
    events = [data for _, data in await read_events(resp)]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(data) for data in events[:-1]]
    assert len(chunks) == 4  # role, 2 tokens, finish
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_streaming_events_are_paced_not_batched(aiohttp_client: MakeClient) -> None:
    client = await aiohttp_client(make_app(DemoBackendConfig(tokens_per_second=50)))
    payload = {"messages": HELLO, "max_tokens": 10, "stream": True}
    resp = await client.post(CHAT, json=payload)
    assert resp.status == 200
    events = await read_events(resp)
    token_times = [t for t, data in events if data != "[DONE]" and "content" in data]
    assert len(token_times) == 10
    # Nominal spacing is 20 ms, so the 10 tokens span ~180 ms; batching would give ~0.
    assert token_times[-1] - token_times[0] >= 0.12
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    assert sum(gap >= 0.008 for gap in gaps) >= 6, gaps


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", CHAT, {"messages": HELLO, "max_tokens": 200, "stream": True}),
        ("GET", "/_test/sse?events=200&interval=0.01", None),
        ("GET", f"/_test/bytes?n={BYTES_CAP}", None),
    ],
)
async def test_client_leaving_mid_stream_is_quiet(
    caplog: pytest.LogCaptureFixture, method: str, path: str, payload: dict[str, Any] | None
) -> None:
    # A real runner: the test server cancels handlers on disconnect, which hides write errors.
    caplog.set_level(logging.DEBUG, logger="teeproxy.demo")
    runner, url = await start_demo_backend(DemoBackendConfig(tokens_per_second=100))
    try:
        async with aiohttp.ClientSession() as session:
            resp = await session.request(method, url + path, json=payload)
            assert resp.status == 200
            await resp.content.readany()
            resp.close()  # drop the connection mid-response
            await asyncio.sleep(0.2)
            async with session.get(url + "/health") as health:
                assert health.status == 200
    finally:
        await runner.cleanup()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("client left" in r.getMessage() for r in caplog.records if r.name == "teeproxy.demo")


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": ["user"], "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
            "messages[0].content[0].text",
        ),
        ({"messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO, "model": 3}, "model"),
        ({"messages": HELLO, "max_tokens": 0}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 4097}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": -1}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": "10"}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": 1.5}, "max_tokens"),
        ({"messages": HELLO, "max_tokens": True}, "max_tokens"),
        ({"messages": HELLO, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({"messages": HELLO, "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": HELLO, "stream": True, "stream_options": []}, "stream_options"),
        (
            {"messages": HELLO, "stream": True, "stream_options": {"include_usage": 1}},
            "stream_options.include_usage",
        ),
    ],
)
async def test_chat_validation_errors(client: Client, payload: dict[str, Any], param: str) -> None:
    resp = await client.post(CHAT, json=payload)
    assert resp.status == 400
    assert_error(await resp.json(), param)


@pytest.mark.parametrize(
    "body", [b"", b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe\x00", b"[" * 100_000]
)
async def test_chat_body_not_a_json_object(client: Client, body: bytes) -> None:
    resp = await client.post(CHAT, data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert_error(await resp.json(), None)


@pytest.mark.parametrize("payload", [{}, {"prompt": 3}, {"prompt": []}, {"prompt": ["a", 1]}])
async def test_legacy_validation_errors(client: Client, payload: dict[str, Any]) -> None:
    resp = await client.post("/v1/completions", json=payload)
    assert resp.status == 400
    assert_error(await resp.json(), "prompt")


@pytest.mark.parametrize("chunked", [False, True])
async def test_body_too_large(aiohttp_client: MakeClient, chunked: bool) -> None:
    client = await aiohttp_client(make_app(DemoBackendConfig(max_request_body=1000)))
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}).encode()

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    resp = await client.post(CHAT, data=gen() if chunked else body)
    assert resp.status == 413
    assert_error(await resp.json(), None)


@pytest.mark.parametrize("n", [0, 1, 255, 65536, 65537, 1_000_003])
async def test_bytes_exact_length(client: Client, n: int) -> None:
    resp = await client.get("/_test/bytes", params={"n": str(n)})
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(n)
    data = await resp.read()
    assert len(data) == n
    assert data == bytes(i % 256 for i in range(n))


@pytest.mark.parametrize(
    "query", ["", "n=", "n=-1", "n=abc", "n=1.5", "n= 5", f"n={BYTES_CAP + 1}"]
)
async def test_bytes_bad_query(client: Client, query: str) -> None:
    resp = await client.get("/_test/bytes?" + query)
    assert resp.status == 400
    assert_error(await resp.json(), "n")


async def test_echo_streams_body_back(client: Client) -> None:
    payload = os.urandom(3 * 1024 * 1024)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    resp = await client.post("/_test/echo", data=gen())
    assert resp.status == 200
    assert "Content-Length" not in resp.headers
    assert await resp.read() == payload

    resp = await client.post("/_test/echo", data=b"abc", headers={"Content-Type": "text/plain"})
    assert resp.headers["Content-Length"] == "3"
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert await resp.read() == b"abc"


async def test_ws_echo(client: Client) -> None:
    async with client.ws_connect("/_test/ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\x01\xff")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01\xff"
        await ws.send_str("")
        assert await ws.receive_str(timeout=5) == ""


async def test_sse_spacing(client: Client) -> None:
    resp = await client.get("/_test/sse", params={"events": "6", "interval": "0.04"})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "text/event-stream"
    events = await read_events(resp)
    assert [int(data.split()[0]) for _, data in events] == list(range(6))
    assert all(float(data.split()[1]) > 1_600_000_000 for _, data in events)
    assert events[-1][0] - events[0][0] >= 0.15


async def test_sse_defaults(client: Client) -> None:
    resp = await client.get("/_test/sse", params={"interval": "0"})
    assert len(await read_events(resp)) == 10


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("events=-1", "events"),
        ("events=x", "events"),
        ("events=100001", "events"),
        ("interval=-0.1", "interval"),
        ("interval=nan", "interval"),
        ("interval=inf", "interval"),
        ("interval=61", "interval"),
        ("interval=soon", "interval"),
    ],
)
async def test_sse_bad_query(client: Client, query: str, param: str) -> None:
    resp = await client.get("/_test/sse?" + query)
    assert resp.status == 400
    assert_error(await resp.json(), param)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tokens_per_second": -1.0},
        {"tokens_per_second": float("nan")},
        {"model": ""},
        {"max_tokens_default": 0},
        {"max_tokens_default": 10, "max_tokens_limit": 5},
        {"max_request_body": 0},
    ],
)
def test_config_validation(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DemoBackendConfig(**kwargs)


async def test_start_demo_backend_tcp() -> None:
    runner, url = await start_demo_backend(DemoBackendConfig(tokens_per_second=0))
    try:
        assert url.startswith("http://127.0.0.1:")
        assert int(url.rsplit(":", 1)[1]) > 0
        async with aiohttp.ClientSession() as session, session.get(url + "/health") as resp:
            assert await resp.json() == {"status": "ok"}
    finally:
        await runner.cleanup()


async def test_start_demo_backend_unix(tmp_path: Path) -> None:
    path = str(tmp_path / "demo.sock")
    runner, url = await start_demo_backend(DemoBackendConfig(tokens_per_second=0), unix_path=path)
    try:
        assert url == f"unix:{path}"
        connector = aiohttp.UnixConnector(path=path)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get("http://demo/v1/models") as resp,
        ):
            assert (await resp.json())["data"][0]["id"] == "teeproxy-demo"
    finally:
        await runner.cleanup()


def test_main_runs_until_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.cli.demo_backend", "--port", "0", "--tokens-per-second", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        assert ready, "demo backend did not report its URL"
        line = proc.stdout.readline()
        assert line.startswith("demo backend listening on http://127.0.0.1:")
        port = int(line.strip().rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read()) == {"status": "ok"}
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_main_rejects_bad_rate() -> None:
    from proxy.cli.demo_backend import main

    with pytest.raises(SystemExit) as exc_info:
        main(["--tokens-per-second", "-5"])
    assert exc_info.value.code == 2


# -- embeddings ------------------------------------------------------------------------------


async def test_embeddings_are_deterministic_unit_vectors(client: Client) -> None:
    resp = await client.post(
        "/v1/embeddings", json={"model": "m", "input": ["hello world", "bye"], "dimensions": 32}
    )
    assert resp.status == 200
    doc = await resp.json()
    assert doc["object"] == "list" and doc["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    first, second = (d["embedding"] for d in doc["data"])
    assert [d["index"] for d in doc["data"]] == [0, 1]
    assert len(first) == 32 and abs(sum(v * v for v in first) - 1.0) < 1e-9
    assert first != second
    again = await (await client.post("/v1/embeddings", json={"input": "hello world"})).json()
    assert len(again["data"][0]["embedding"]) == 64  # the default size
    same = await (
        await client.post("/v1/embeddings", json={"input": "hello world", "dimensions": 32})
    ).json()
    assert same["data"][0]["embedding"] == first


async def test_embeddings_base64_is_little_endian_float32(client: Client) -> None:
    import base64
    import struct

    plain = await (await client.post("/v1/embeddings", json={"input": "x", "dimensions": 4})).json()
    b64 = await (
        await client.post(
            "/v1/embeddings", json={"input": "x", "dimensions": 4, "encoding_format": "base64"}
        )
    ).json()
    decoded = struct.unpack("<4f", base64.b64decode(b64["data"][0]["embedding"]))
    assert decoded == pytest.approx(plain["data"][0]["embedding"], rel=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": [1]}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "dimensions": True}, "dimensions"),
        ({"input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"input": "x", "model": 3}, "model"),
    ],
)
async def test_embeddings_refuse_bad_requests(
    client: Client, body: dict[str, Any], param: str
) -> None:
    resp = await client.post("/v1/embeddings", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
