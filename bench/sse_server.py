"""Tiny server-sent-events backend for the teeproxy benchmark.

Plain HTTP/1.1 over raw asyncio streams (uvloop when available), keep-alive,
chunked responses:

* ``GET /sse?events=N&interval=S`` -- N events ``data: <seq> <unix_time_float>\\n\\n``,
  one every S seconds on an absolute schedule, each written as its own chunk and
  drained before the next, so every event leaves the process as soon as it exists.
  The timestamp is taken immediately before the write.
* ``GET /idle`` -- headers and one event, then silence until the client goes away
  (used to measure a proxy's memory per open stream).
* ``GET /small`` -- ``hello, world\\n`` (for checking this server directly).
* ``POST /v1/completions?events=N&interval=S`` -- an OpenAI-style streamed completion
  (request body read whole, at most 1 MiB, Content-Length only): N events
  ``data: {"id":...,"model":...,"choices":[...],"t":<unix_time_float>}``, each its own chunk
  on the same schedule as ``/sse`` (``t`` taken right before the write), then
  ``data: [DONE]`` and the end of the body (test (f) of the benchmark).
* ``POST /v1/chat/completions?events=N&interval=S`` -- the same, shaped like OpenAI chat
  completion chunks (``chat.completion.chunk`` with a ``delta``, about 210 bytes each):
  test (g), LLM-shaped load.

Run: ``python bench/sse_server.py --host 127.0.0.1 --port 0`` -- prints
``LISTENING <port>`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

MAX_EVENTS = 1_000_000
MAX_HEADER_BYTES = 16384
MAX_BODY_BYTES = 1024 * 1024
STREAM_PATH = "/v1/completions"
CHAT_STREAM_PATH = "/v1/chat/completions"

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
)


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(seq: int) -> bytes:
    return _chunk(b"data: %d %.6f\n\n" % (seq, time.time()))


def _simple(status: str, body: bytes, keep_alive: bool) -> bytes:
    conn = b"keep-alive" if keep_alive else b"close"
    return (
        b"HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
        % (status.encode(), len(body), conn, body)
    )


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


async def _paced(
    writer: asyncio.StreamWriter,
    events: int,
    interval: float,
    event: Callable[[int], bytes],
    tail: bytes = b"",
) -> None:
    """The chunked SSE head, ``events`` events ``interval`` s apart, ``tail``, the end."""
    writer.write(SSE_HEAD)
    start = time.monotonic()
    for seq in range(events):
        delay = start + seq * interval - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(event(seq))
        await writer.drain()
    if tail:
        writer.write(tail)
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


async def _sse(writer: asyncio.StreamWriter, events: int, interval: float) -> None:
    await _paced(writer, events, interval, _event)


def _completion_event(seq: int) -> bytes:
    return _chunk(
        b'data: {"id":"cmpl-bench0001","object":"text_completion","created":1700000000,'
        b'"model":"bench-model","choices":[{"index":0,"text":" %d","logprobs":null,'
        b'"finish_reason":null}],"t":%.6f}\n\n' % (seq, time.time())
    )


async def _completion_stream(writer: asyncio.StreamWriter, events: int, interval: float) -> None:
    await _paced(writer, events, interval, _completion_event, _chunk(b"data: [DONE]\n\n"))


def _chat_event(seq: int) -> bytes:
    return _chunk(
        b'data: {"id":"chatcmpl-bench0001","object":"chat.completion.chunk",'
        b'"created":1700000000,"model":"bench-model","system_fingerprint":"fp_bench",'
        b'"choices":[{"index":0,"delta":{"content":" token%d"},"logprobs":null,'
        b'"finish_reason":null}],"t":%.6f}\n\n' % (seq, time.time())
    )


async def _chat_stream(writer: asyncio.StreamWriter, events: int, interval: float) -> None:
    await _paced(writer, events, interval, _chat_event, _chunk(b"data: [DONE]\n\n"))


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes | None:
    """The request body by Content-Length (None: missing, chunked, invalid or too large)."""
    if "transfer-encoding" in headers:
        return None
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        return None
    if not 0 <= length <= MAX_BODY_BYTES:
        return None
    return await reader.readexactly(length) if length else b""


def _stream_query(query: dict[str, list[str]]) -> tuple[int, float] | None:
    try:
        events = min(int(query.get("events", ["10"])[0]), MAX_EVENTS)
        interval = max(0.0, float(query.get("interval", ["0.02"])[0]))
    except ValueError:
        return None
    return events, interval


async def _idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(SSE_HEAD + _event(0))
    await writer.drain()
    # Hold the stream open silently until the peer closes (read returns b"").
    while await reader.read(4096):
        pass


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await _read_head(reader)
            if head is None:
                return
            method, target, headers = head
            keep_alive = headers.get("connection", "").lower() != "close"
            url = urlsplit(target)
            query = parse_qs(url.query)
            if method == "POST" and url.path in (STREAM_PATH, CHAT_STREAM_PATH):
                body = await _read_body(reader, headers)
                shape = _stream_query(query)
                if body is None:
                    writer.write(_simple("411 Length Required", b"bad body\n", False))
                    keep_alive = False
                elif shape is None:
                    writer.write(_simple("400 Bad Request", b"bad query\n", keep_alive))
                elif url.path == CHAT_STREAM_PATH:
                    await _chat_stream(writer, *shape)
                else:
                    await _completion_stream(writer, *shape)
            elif method != "GET":
                writer.write(_simple("405 Method Not Allowed", b"GET only\n", keep_alive))
            elif url.path == "/sse":
                shape = _stream_query(query)
                if shape is None:
                    writer.write(_simple("400 Bad Request", b"bad query\n", keep_alive))
                else:
                    await _sse(writer, *shape)
            elif url.path == "/idle":
                await _idle(reader, writer)
                return
            elif url.path == "/small":
                writer.write(_simple("200 OK", b"hello, world\n", keep_alive))
            else:
                writer.write(_simple("404 Not Found", b"not found\n", keep_alive))
            await writer.drain()
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await writer.wait_closed()


async def serve(host: str, port: int) -> None:
    server = await asyncio.start_server(handle, host, port, backlog=4096, limit=MAX_HEADER_BYTES)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        asyncio.run(serve(args.host, args.port))
    else:
        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
