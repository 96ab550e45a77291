"""proxy.dataplane.forward: the forwarder's hooks, local endpoints, errors and targets.

The forwarder runs behind the proxy's own protocol on a plain loopback listener (TLS is the
listener's business, tested elsewhere) in front of a real aiohttp backend, so each test
sees exactly what a tap, an endpoint and a client see.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from multidict import CIMultiDict

from proxy.config import Config, loads
from proxy.dataplane.endpoints import LocalEndpoints
from proxy.dataplane.forward import Forwarder, make_session
from proxy.dataplane.hooks import STREAM
from proxy.dataplane.protocol import ProxyHTTPServer


@dataclass
class RecordingTap:
    """Records every hook call; optionally edits headers or holds the body."""

    hold: int | None = STREAM
    add_header: tuple[str, str] | None = None
    end_header: tuple[str, str] | None = None
    calls: list[str] = field(default_factory=list)
    request: bytearray = field(default_factory=bytearray)
    response: bytearray = field(default_factory=bytearray)
    status: int = 0
    headers: CIMultiDict[str] | None = None

    def request_body(self, chunk: bytes) -> None:
        self.calls.append("request_body")
        self.request += chunk

    def response_headers(
        self, status: int, headers: CIMultiDict[str], content_length: int | None
    ) -> int | None:
        self.calls.append("response_headers")
        self.status = status
        self.headers = headers
        headers.popall("X-Secret", None)
        if self.add_header is not None:
            headers[self.add_header[0]] = self.add_header[1]
        return self.hold

    def response_body(self, chunk: bytes) -> None:
        self.calls.append("response_body")
        self.response += chunk

    async def response_end(self) -> None:
        self.calls.append("response_end")
        if self.end_header is not None and self.headers is not None:
            self.headers[self.end_header[0]] = self.end_header[1]

    def error(self) -> None:
        self.calls.append("error")


@dataclass
class Taps:
    """A TapFactory handing out one RecordingTap per exchange on the paths it taps."""

    paths: tuple[str, ...] = ("/",)
    make: Callable[[], RecordingTap] = RecordingTap
    made: list[RecordingTap] = field(default_factory=list)

    def tap(self, method: str, path: str) -> RecordingTap | None:
        if not any(path.startswith(p) for p in self.paths):
            return None
        t = self.make()
        self.made.append(t)
        return t


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Running:
    url: str
    forwarder: Forwarder
    backend_hits: list[str]


Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start(aiohttp_server: AiohttpServer) -> AsyncIterator[Start]:
    servers: list[asyncio.base_events.Server] = []
    sessions: list[aiohttp.ClientSession] = []
    forwarders: list[Forwarder] = []

    async def go(
        routes: dict[str, Handler],
        *,
        taps: Taps | None = None,
        endpoints: LocalEndpoints | None = None,
        extra: str = "",
        backend_url: str | None = None,
    ) -> Running:
        hits: list[str] = []

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            hits.append(f"{request.method} {request.path_qs}")
            return await handler(request)

        app = web.Application(middlewares=[record])
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        backend = await aiohttp_server(app)
        url = backend_url or f"http://127.0.0.1:{backend.port}"
        cfg: Config = await asyncio.to_thread(
            loads,
            f'state_dir = "/nonexistent-teeproxy-test"\n{extra}\n[backend]\nurl = "{url}"\n'
            "[logging]\naccess_log = false\n",
        )
        session = make_session(cfg)
        sessions.append(session)
        fwd = Forwarder(cfg, session, endpoints=endpoints, taps=taps)
        forwarders.append(fwd)
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(
            ProxyHTTPServer(fwd.handle, cfg.limits, tls=False), "127.0.0.1", 0
        )
        servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        return Running(f"http://127.0.0.1:{port}", fwd, hits)

    yield go
    for srv in servers:
        srv.close()
    for fwd in forwarders:
        fwd.close()
    for s in sessions:
        await s.close()


async def _chunks(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    resp = web.StreamResponse(headers={"X-Secret": "backend", "X-Kept": "1"})
    await resp.prepare(request)
    for part in (b"one,", b"two,", body):
        await resp.write(part)
        await asyncio.sleep(0.01)
    await resp.write_eof()
    return resp


async def test_a_tap_sees_every_byte_in_hook_order(start: Start) -> None:
    taps = Taps()
    run = await start({"/x": _chunks}, taps=taps)
    async with aiohttp.ClientSession() as s, s.post(f"{run.url}/x", data=b"payload") as r:
        assert r.status == 200
        body = await r.read()
        assert "X-Secret" not in r.headers and r.headers["X-Kept"] == "1"
    assert body == b"one,two,payload"
    (tap,) = taps.made
    assert bytes(tap.request) == b"payload" and bytes(tap.response) == body
    assert tap.status == 200
    # requests first, headers once, then the body, then exactly one end
    assert tap.calls[0] == "request_body"
    first_headers = tap.calls.index("response_headers")
    assert tap.calls.count("response_headers") == 1
    assert set(tap.calls[first_headers + 1 : -1]) == {"response_body"}
    assert tap.calls[-1] == "response_end" and "error" not in tap.calls


async def test_untapped_paths_get_no_tap(start: Start) -> None:
    taps = Taps(paths=("/tapped",))
    run = await start({"/x": _chunks}, taps=taps)
    async with aiohttp.ClientSession() as s, s.post(f"{run.url}/x", data=b"p") as r:
        assert r.status == 200
        assert r.headers["X-Secret"] == "backend"  # nobody removed it
    assert taps.made == []


async def test_a_held_body_goes_out_with_headers_the_tap_completed(start: Start) -> None:
    async def whole(_request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1000, content_type="application/json")

    taps = Taps(make=lambda: RecordingTap(hold=4096, end_header=("X-Signed", "yes")))
    run = await start({"/x": whole}, taps=taps)
    async with aiohttp.ClientSession() as s, s.get(f"{run.url}/x") as r:
        assert r.status == 200
        assert r.headers["X-Signed"] == "yes"  # set in response_end, before the headers
        assert await r.read() == b"x" * 1000
    (tap,) = taps.made
    assert tap.calls == ["response_headers", "response_body", "response_end"]


async def test_a_held_body_over_its_limit_is_a_clean_502(start: Start) -> None:
    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 5000)

    taps = Taps(make=lambda: RecordingTap(hold=100))
    run = await start({"/x": big}, taps=taps)
    async with aiohttp.ClientSession() as s, s.get(f"{run.url}/x") as r:
        assert r.status == 502
        doc = await r.json()
        assert doc["error"]["type"] == "backend_unavailable" and doc["error"]["code"] == 502
        assert "100-byte" in doc["error"]["message"]
    (tap,) = taps.made
    assert tap.calls[-1] == "error" and "response_end" not in tap.calls


async def test_a_stream_that_breaks_mid_body_ends_in_error_and_a_cut(
    start: Start, unused_tcp_port: int
) -> None:
    """The backend promises 100 bytes, sends 10, closes: the tap hears error(), never
    response_end(), and the client's connection is cut (a short body must not look whole)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    raw = await asyncio.start_server(serve, "127.0.0.1", unused_tcp_port)
    try:
        taps = Taps()
        run = await start({}, taps=taps, backend_url=f"http://127.0.0.1:{unused_tcp_port}")
        async with aiohttp.ClientSession() as s, s.get(f"{run.url}/x") as r:
            assert r.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()
        for _ in range(100):  # the handler finishes after the client saw the cut
            if taps.made and taps.made[0].calls[-1] == "error":
                break
            await asyncio.sleep(0.01)
        (tap,) = taps.made
        assert tap.calls[-1] == "error" and "response_end" not in tap.calls
        assert bytes(tap.response) == b"0123456789"
    finally:
        raw.close()


async def test_local_endpoints_answer_and_other_methods_are_forwarded(start: Start) -> None:
    async def local(_request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="local")

    async def backend(_request: web.Request) -> web.Response:
        return web.Response(text="backend")

    endpoints = LocalEndpoints()
    endpoints.add("/local", local, methods=("GET",))
    endpoints.add("/pre/", local, prefix=True)
    run = await start({"/local": backend, "/pre/{tail}": backend}, endpoints=endpoints)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{run.url}/local") as r:
            assert await r.text() == "local"
        async with s.post(f"{run.url}/local") as r:
            assert await r.text() == "backend"  # not registered for POST: forwarded
        async with s.get(f"{run.url}/pre/anything") as r:
            assert await r.text() == "local"
    assert run.backend_hits == ["POST /local"]


async def test_backend_down_is_a_json_502_that_closes_the_connection(
    start: Start, unused_tcp_port: int
) -> None:
    run = await start({}, backend_url=f"http://127.0.0.1:{unused_tcp_port}")
    async with aiohttp.ClientSession() as s, s.get(f"{run.url}/v1/models") as r:
        assert r.status == 502
        assert r.headers["Connection"].lower() == "close"
        assert r.headers["Content-Type"].startswith("application/json")
        doc = json.loads(await r.read())
    assert set(doc["error"]) == {"message", "type", "code"}
    assert doc["error"]["type"] == "backend_unavailable"


async def test_absolute_form_targets_are_reduced_to_origin_form(start: Start) -> None:
    async def echo(request: web.Request) -> web.Response:
        assert request.headers.getall("Host") == ["elsewhere.example"]  # RFC 9112 3.2.2
        return web.Response(text=request.path_qs)

    run = await start({"/p": echo})
    host, port = run.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET http://elsewhere.example/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    assert await reader.readexactly(length) == b"/p?q=1"
    writer.close()
    assert run.backend_hits == ["GET /p?q=1"]


async def test_hsts_and_draining(start: Start) -> None:
    async def plain(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    run = await start({"/": plain}, extra="[tls]\nhsts_max_age = 600")
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{run.url}/") as r:
            assert r.headers["Strict-Transport-Security"] == "max-age=600"
            assert r.headers["Server"].startswith("Python/")  # the backend's, relayed as is
            assert r.headers.get("Connection", "").lower() != "close"
        run.forwarder.draining = True
        async with s.get(f"{run.url}/") as r:
            assert await r.text() == "ok"
            assert r.headers["Connection"].lower() == "close"  # drain: no more keep-alive


async def test_the_access_log_has_the_real_sizes_of_local_answers(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    async def local(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(body=b"e" * 123)

    endpoints = LocalEndpoints()
    endpoints.add("/local", local)
    run = await start({}, endpoints=endpoints, extra="[limits]\nmax_body_size = 10")
    run.forwarder.cfg = dataclasses.replace(
        run.forwarder.cfg, logging=dataclasses.replace(run.forwarder.cfg.logging, access_log=True)
    )
    with caplog.at_level(logging.INFO, logger="teeproxy.access"):
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{run.url}/local", data=b"x" * 45) as r:
                assert len(await r.read()) == 123
            async with s.post(f"{run.url}/big", data=b"y" * 11) as r:  # the proxy's own 413
                body = await r.read()
                assert r.status == 413
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "teeproxy.access"]
    assert lines[0].split()[3:6] == ["200", "45", "123"], lines
    assert lines[1].split()[3] == "413" and lines[1].split()[5] == str(len(body)), lines


async def test_server_field_of_local_and_relayed_answers(start: Start) -> None:
    async def local(_request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="local")

    async def anonymous(_request: web.Request) -> web.StreamResponse:
        resp = web.Response(text="backend")
        resp.headers["Server"] = "backend/1"
        return resp

    endpoints = LocalEndpoints()
    endpoints.add("/local", local)
    run = await start({"/named": anonymous}, endpoints=endpoints)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{run.url}/local") as r:
            assert r.headers.getall("Server") == ["teeproxy"]
        async with s.get(f"{run.url}/named") as r:
            assert r.headers.getall("Server") == ["backend/1"]
