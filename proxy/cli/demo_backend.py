"""Built-in OpenAI-compatible demo inference backend.

This module owns the fake "model" behind ``teeproxy demo`` (so a demo needs no external
inference server) and the realistic upstream used by the proxy's tests and benchmarks. It is an
aiohttp application; :func:`make_app` builds it, :func:`start_demo_backend` serves it on TCP or a
unix socket, and :func:`main` runs it standalone (``python -m proxy.demo_backend``).

OpenAI-compatible routes:

* ``GET /health`` -> ``{"status": "ok"}``
* ``GET /v1/models`` -> an OpenAI model list holding the one configured model
* ``POST /v1/chat/completions`` -> chat completion, streamed as SSE when ``stream`` is true
* ``POST /v1/completions`` -> legacy text completion (``prompt`` string or list of strings)
* ``POST /v1/embeddings`` -> one deterministic unit vector per input (``input`` a string or a
  non-empty list of strings; ``dimensions`` 1..4096, default 64; ``encoding_format``
  ``float`` or ``base64`` (little-endian float32, as OpenAI encodes it)); the same text always
  gives the same vector (SHA-256 in counter mode, mapped to [-1, 1), normalised)

Generation is deterministic: the reply cycles through ``You said: <words of the last user
message>``, one word plus a trailing space per token. Without ``max_tokens`` (or
``max_completion_tokens``) the reply is ``max_tokens_default`` tokens and finishes with
``"stop"``; with it the reply is exactly that many tokens and finishes with ``"length"``. Tokens
are produced at ``tokens_per_second`` (0 = as fast as possible): streamed responses write and
flush one SSE event per token as it is produced, non-streamed ones answer once all are produced.
``prompt_tokens`` is the whitespace-separated word count of the prompt. Invalid requests get
400 (413 when the body exceeds ``max_request_body``) with an OpenAI-style error body
``{"error": {"message", "type": "invalid_request_error", "param", "code": null}}``.

Test-support routes (for proxy tests and benchmarks; not part of the OpenAI surface; bad query
values get 400 with the same error body):

* ``GET /_test/bytes?n=N`` -> exactly N bytes (0 <= N <= 64 MiB) with Content-Length; byte k is
  ``k % 256``.
* ``GET /_test/sse?events=N&interval=S`` -> N events (0..100000, default 10), each
  ``data: <seq> <time.time()>\\n\\n`` with seq counting from 0, the first at once and then one
  every S seconds (0..60, default 0.1).
* ``POST /_test/echo`` -> the request body streamed back chunk by chunk as it arrives (same
  Content-Type; Content-Length when the request had one, chunked otherwise).
* ``GET /_test/ws`` -> WebSocket echo of text and binary messages.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import logging
import math
import secrets
import signal
import struct
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import WSMsgType, web

from proxy.log import demo_log as log

MIB: Final = 1024 * 1024
BYTES_CAP: Final = 64 * MIB
SSE_EVENTS_CAP: Final = 100_000
SSE_INTERVAL_CAP: Final = 60.0
_ROLES: Final = ("system", "developer", "user", "assistant", "tool")
_PATTERN: Final = bytes(range(256)) * 256  # 64 KiB, a whole number of 256-byte periods
_SSE_HEADERS: Final = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class DemoBackendConfig:
    """Behaviour of the demo model; validated on construction (ValueError)."""

    tokens_per_second: float = 20.0  # rate tokens are produced at; 0 = as fast as possible
    model: str = "teeproxy-demo"
    max_tokens_default: int = 64
    max_tokens_limit: int = 4096
    max_request_body: int = 1 * MIB

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tokens_per_second) and self.tokens_per_second >= 0):
            raise ValueError("tokens_per_second must be a finite number >= 0")
        if not self.model:
            raise ValueError("model must not be empty")
        if self.max_tokens_limit < 1:
            raise ValueError("max_tokens_limit must be >= 1")
        if not 1 <= self.max_tokens_default <= self.max_tokens_limit:
            raise ValueError("max_tokens_default must be between 1 and max_tokens_limit")
        if self.max_request_body < 1:
            raise ValueError("max_request_body must be >= 1")


class _ApiError(Exception):
    """A client error, answered with an OpenAI-style error body."""

    def __init__(self, message: str, param: str | None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status

    def response(self) -> web.Response:
        error = {
            "message": self.message,
            "type": "invalid_request_error",
            "param": self.param,
            "code": None,
        }
        return web.json_response({"error": error}, status=self.status)


@web.middleware
async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _ApiError as exc:
        log.debug("demo: %s %s rejected: %s", request.method, request.path, exc.message)
        return exc.response()


@dataclass(frozen=True)
class _Generation:
    """A validated generation request."""

    tokens: list[str]
    prompt_tokens: int
    finish_reason: str
    stream: bool
    include_usage: bool

    def usage(self) -> dict[str, int]:
        done = len(self.tokens)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


class _Pacer:
    """Sleeps until tick i (i * interval after creation), so drift does not accumulate."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._loop = asyncio.get_running_loop()
        self._start = self._loop.time()

    async def until(self, tick: int) -> None:
        await asyncio.sleep(max(self._start + tick * self._interval - self._loop.time(), 0.0))


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _reply_tokens(words: list[str], n: int) -> list[str]:
    source = ["You", "said:", *(words or ["nothing."])]
    return [word + " " for word in itertools.islice(itertools.cycle(source), n)]


def _content_text(content: object, param: str, *, optional: bool) -> str:
    if content is None and optional:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _ApiError(f"'{param}' must be a string or a list of text parts", param)
    texts: list[str] = []
    for i, part in enumerate(content):
        if not (isinstance(part, dict) and part.get("type") == "text"):
            raise _ApiError(f"'{param}[{i}]' must be a text part", f"{param}[{i}]")
        text = part.get("text")
        if not isinstance(text, str):
            raise _ApiError(f"'{param}[{i}].text' must be a string", f"{param}[{i}].text")
        texts.append(text)
    return " ".join(texts)


def _parse_messages(body: dict[str, Any]) -> tuple[list[str], int]:
    """Return the words of the last user message and the prompt's word count."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _ApiError("'messages' must be a non-empty list of messages", "messages")
    last_user = ""
    prompt_tokens = 0
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _ApiError(f"'{param}' must be an object", param)
        role = message.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise _ApiError(f"'{param}.role' must be one of {', '.join(_ROLES)}", f"{param}.role")
        text = _content_text(
            message.get("content"), f"{param}.content", optional=role == "assistant"
        )
        prompt_tokens += len(text.split())
        if role == "user":
            last_user = text
    return last_user.split(), prompt_tokens


def _parse_prompt(body: dict[str, Any]) -> tuple[list[str], int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompt = " ".join(prompt)
    if not isinstance(prompt, str):
        raise _ApiError("'prompt' must be a string or a non-empty list of strings", "prompt")
    words = prompt.split()
    return words, len(words)


MAX_EMBEDDING_DIMENSIONS: Final = 4096
MAX_EMBEDDING_INPUTS: Final = 2048


def embedding(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text`` (no model: a stand-in with the right shape)."""
    raw = b"".join(
        hashlib.sha256(b"%d:" % i + text.encode("utf-8")).digest()
        for i in range((dimensions * 4 + 31) // 32)
    )
    values = [
        int.from_bytes(raw[4 * k : 4 * k + 4], "little") / 2**31 - 1.0 for k in range(dimensions)
    ]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _parse_embedding_request(body: dict[str, Any]) -> tuple[list[str], int, str]:
    items = body.get("input")
    if isinstance(items, str):
        items = [items]
    if (
        not isinstance(items, list)
        or not items
        or len(items) > MAX_EMBEDDING_INPUTS
        or not all(isinstance(i, str) for i in items)
    ):
        raise _ApiError(
            f"'input' must be a string or a list of 1 to {MAX_EMBEDDING_INPUTS} strings", "input"
        )
    dims = body.get("dimensions", 64)
    if (
        isinstance(dims, bool)
        or not isinstance(dims, int)
        or not 1 <= dims <= MAX_EMBEDDING_DIMENSIONS
    ):
        raise _ApiError(
            f"'dimensions' must be an integer from 1 to {MAX_EMBEDDING_DIMENSIONS}", "dimensions"
        )
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _ApiError("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    return items, dims, fmt


class _Demo:
    """Request handlers bound to one configuration."""

    def __init__(self, cfg: DemoBackendConfig) -> None:
        self.cfg = cfg
        self.created = int(time.time())
        rate = cfg.tokens_per_second
        self.interval = 1.0 / rate if rate > 0 else 0.0

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def models(self, _request: web.Request) -> web.Response:
        model = {"id": self.cfg.model, "object": "model", "created": self.created}
        return web.json_response({"object": "list", "data": [{**model, "owned_by": "teeproxy"}]})

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        limit = self.cfg.max_request_body
        too_large = _ApiError(f"request body exceeds {limit} bytes", None, status=413)
        if request.content_length is not None and request.content_length > limit:
            raise too_large
        buf = bytearray()
        async for chunk in request.content.iter_any():
            buf += chunk
            if len(buf) > limit:
                raise too_large
        try:
            body = json.loads(buf)
        except (ValueError, RecursionError):
            raise _ApiError("request body is not valid JSON", None) from None
        if not isinstance(body, dict):
            raise _ApiError("request body must be a JSON object", None)
        return body

    def _generation(self, body: dict[str, Any], words: list[str], prompt: int) -> _Generation:
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _ApiError("'model' must be a string", "model")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise _ApiError("'stream' must be a boolean", "stream")
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = body.get(key)
        limit = self.cfg.max_tokens_limit
        if max_tokens is None:
            n, finish = self.cfg.max_tokens_default, "stop"
        elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise _ApiError(f"'{key}' must be an integer", key)
        elif not 1 <= max_tokens <= limit:
            raise _ApiError(f"'{key}' must be between 1 and {limit}", key)
        else:
            n, finish = max_tokens, "length"
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise _ApiError("'stream_options' requires 'stream' to be true", "stream_options")
            if not isinstance(options, dict):
                raise _ApiError("'stream_options' must be an object", "stream_options")
            include_usage = options.get("include_usage", False)
            if not isinstance(include_usage, bool):
                param = "stream_options.include_usage"
                raise _ApiError(f"'{param}' must be a boolean", param)
        tokens = _reply_tokens(words, n)
        return _Generation(tokens, prompt, finish, bool(stream), include_usage)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        gen = self._generation(body, *_parse_messages(body))
        return await self._answer(request, gen, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._json_body(request)
        gen = self._generation(body, *_parse_prompt(body))
        return await self._answer(request, gen, chat=False)

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise _ApiError("'model' must be a string", "model")
        items, dims, fmt = _parse_embedding_request(body)
        data: list[dict[str, Any]] = []
        for i, text in enumerate(items):
            vector = embedding(text, dims)
            value: Any = vector
            if fmt == "base64":
                value = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(t.split()) for t in items)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": self.cfg.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _answer(
        self, request: web.Request, gen: _Generation, *, chat: bool
    ) -> web.StreamResponse:
        cid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        head = {"id": cid, "created": int(time.time()), "model": self.cfg.model}
        if gen.stream:
            resp = web.StreamResponse(headers=_SSE_HEADERS)
            return await _pump(request, resp, self._chunks(gen, head, chat=chat))
        await _Pacer(self.interval).until(len(gen.tokens))
        text = "".join(gen.tokens)
        choice: dict[str, Any] = {"index": 0}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        choice |= {"logprobs": None, "finish_reason": gen.finish_reason}
        obj = "chat.completion" if chat else "text_completion"
        return web.json_response({**head, "object": obj, "choices": [choice], "usage": gen.usage()})

    async def _chunks(
        self, gen: _Generation, head: dict[str, Any], *, chat: bool
    ) -> AsyncGenerator[bytes, None]:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        tail: dict[str, Any] = {"usage": None} if gen.include_usage else {}

        def event(fields: dict[str, Any], finish: str | None) -> bytes:
            choice = {"index": 0, **fields, "logprobs": None, "finish_reason": finish}
            return _sse({**head, "choices": [choice], **tail})

        if chat:
            yield event({"delta": {"role": "assistant"}}, None)
        pacer = _Pacer(self.interval)
        for i, token in enumerate(gen.tokens, 1):
            await pacer.until(i)
            yield event({"delta": {"content": token}} if chat else {"text": token}, None)
        yield event({"delta": {}} if chat else {"text": ""}, gen.finish_reason)
        if gen.include_usage:
            yield _sse({**head, "choices": [], "usage": gen.usage()})
        yield b"data: [DONE]\n\n"

    async def test_bytes(self, request: web.Request) -> web.StreamResponse:
        n = _query_int(request, "n", BYTES_CAP, None)

        async def chunks() -> AsyncGenerator[bytes, None]:
            for offset in range(0, n, len(_PATTERN)):
                yield _PATTERN[: n - offset]  # the whole pattern (no copy) but for the tail

        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.content_length = n
        return await _pump(request, resp, chunks())

    async def test_sse(self, request: web.Request) -> web.StreamResponse:
        events = _query_int(request, "events", SSE_EVENTS_CAP, 10)
        try:
            interval = float(request.query.get("interval", "0.1"))
        except ValueError:
            interval = math.nan
        if not (math.isfinite(interval) and 0 <= interval <= SSE_INTERVAL_CAP):
            msg = f"query parameter 'interval' must be a number in [0, {SSE_INTERVAL_CAP}]"
            raise _ApiError(msg, "interval")

        async def chunks() -> AsyncGenerator[bytes, None]:
            pacer = _Pacer(interval)
            for seq in range(events):
                await pacer.until(seq)
                yield f"data: {seq} {time.time()}\n\n".encode()

        return await _pump(request, web.StreamResponse(headers=_SSE_HEADERS), chunks())

    async def test_echo(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_type = request.content_type
        if request.content_length is not None:
            resp.content_length = request.content_length
        return await _pump(request, resp, request.content.iter_any())

    async def test_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.ERROR:
                log.debug("demo: websocket error: %s", ws.exception())
        return ws


async def _pump(
    request: web.Request, resp: web.StreamResponse, chunks: AsyncIterator[bytes]
) -> web.StreamResponse:
    """Send resp, writing (and so flushing) each chunk as it is produced; a client that leaves
    just ends the response."""
    await resp.prepare(request)
    try:
        async for chunk in chunks:
            await resp.write(chunk)
        await resp.write_eof()
    except ConnectionError:  # reset, or "Connection lost" while draining
        log.debug("demo: client left during %s %s", request.method, request.path)
    finally:
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    return resp


def _query_int(request: web.Request, name: str, cap: int, default: int | None) -> int:
    raw = request.query.get(name)
    if raw is None and default is not None:
        return default
    if raw is None or not (raw.isascii() and raw.isdigit()) or int(raw) > cap:
        msg = f"query parameter '{name}' must be an integer in [0, {cap}]"
        raise _ApiError(msg, name)
    return int(raw)


def make_app(cfg: DemoBackendConfig) -> web.Application:
    """Build the demo backend application for ``cfg``."""
    demo = _Demo(cfg)
    app = web.Application(middlewares=[_api_errors])
    app.router.add_get("/health", demo.health)
    app.router.add_get("/v1/models", demo.models)
    app.router.add_post("/v1/chat/completions", demo.chat)
    app.router.add_post("/v1/completions", demo.completions)
    app.router.add_post("/v1/embeddings", demo.embeddings)
    app.router.add_get("/_test/bytes", demo.test_bytes)
    app.router.add_get("/_test/sse", demo.test_sse)
    app.router.add_post("/_test/echo", demo.test_echo)
    app.router.add_get("/_test/ws", demo.test_ws)
    return app


async def start_demo_backend(
    cfg: DemoBackendConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    unix_path: str | None = None,
) -> tuple[web.AppRunner, str]:
    """Serve the demo backend; return its runner (call ``cleanup()``) and base URL.

    With ``unix_path`` it listens on that unix socket and the URL is ``unix:<path>``; otherwise
    on ``host:port`` (port 0 picks an ephemeral port) and the URL is ``http://host:port``.
    """
    runner = web.AppRunner(make_app(cfg), access_log=None)
    await runner.setup()
    try:
        site: web.BaseSite
        if unix_path is not None:
            site = web.UnixSite(runner, unix_path)
            await site.start()
            url = f"unix:{unix_path}"
        else:
            site = web.TCPSite(runner, host, port)
            await site.start()
            real_port = int(runner.addresses[0][1])
            url = f"http://[{host}]:{real_port}" if ":" in host else f"http://{host}:{real_port}"
    except BaseException:
        await runner.cleanup()
        raise
    log.info("demo backend serving %s at %s tok/s", url, cfg.tokens_per_second)
    return runner, url


async def _serve(cfg: DemoBackendConfig, host: str, port: int, unix_path: str | None) -> int:
    try:
        runner, url = await start_demo_backend(cfg, host, port, unix_path)
    except OSError as exc:
        log.error("demo backend could not listen: %s", exc)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        sys.stdout.write(f"demo backend listening on {url}\n")
        sys.stdout.flush()
        await stop.wait()
        log.info("demo backend stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop  # noqa: PLC0415 - an optional dependency
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    """Run the demo backend until SIGINT/SIGTERM; print its URL on stdout once listening."""
    parser = argparse.ArgumentParser(
        prog="python -m proxy.demo_backend",
        description="OpenAI-compatible demo inference backend for teeproxy.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 = ephemeral")
    parser.add_argument("--unix", metavar="PATH", help="listen on this unix socket instead")
    parser.add_argument(
        "--tokens-per-second",
        type=float,
        default=DemoBackendConfig.tokens_per_second,
        help="token rate; 0 = as fast as possible (default %(default)s)",
    )
    parser.add_argument("--model", default=DemoBackendConfig.model, help="model id to serve")
    args = parser.parse_args(argv)
    try:
        cfg = DemoBackendConfig(tokens_per_second=args.tokens_per_second, model=args.model)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(cfg, args.host, args.port, args.unix))


if __name__ == "__main__":
    raise SystemExit(main())
