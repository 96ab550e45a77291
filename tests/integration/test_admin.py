"""The admin listener of a real ``teeproxy serve``: /health, /ready, /metrics over 2 workers."""

from __future__ import annotations

import asyncio
import socket
import ssl
import stat
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from aiohttp.test_utils import TestServer
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.ports import free_port
from tests.helpers.serve import Launch, TLSFiles, listening_pids, serve, write_config

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} missing; have {sorted({k[0] for k in samples})}"
    return samples[key]


async def scrape_until(
    s: aiohttp.ClientSession, url: str, name: str, expected: float, **labels: str
) -> Samples:
    """/metrics once ``name`` shows ``expected``: workers write their data-plane values
    out within proxy.metrics.FLUSH_INTERVAL (0.25 s), so a scrape right after a request
    may not show it yet. Fails with the last value after 5 s."""
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        async with s.get(url) as resp:
            assert resp.status == 200
            samples = parse_metrics(await resp.text())
        if samples.get((name, frozenset(labels.items()))) == expected:
            return samples
        if asyncio.get_running_loop().time() > deadline:
            assert value(samples, name, **labels) == expected  # names what it was instead
            return samples
        await asyncio.sleep(0.05)


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _slow(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"first\n")
    await asyncio.sleep(float(request.query.get("hold", "1.5")))
    await resp.write(b"last\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def backend_server(aiohttp_server: AiohttpServer) -> TestServer:
    app = web.Application()
    app.router.add_get("/slow", _slow)
    app.router.add_get("/{tail:.*}", _hello)
    return await aiohttp_server(app)


async def fetch(url: str, ctx: ssl.SSLContext) -> str:
    """One request on its own connection (a new TLS handshake)."""
    connector = aiohttp.TCPConnector(ssl=ctx, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_health_ready_and_metrics_aggregated_over_two_workers(
    *,
    launch: Launch,
    tmp_path: Path,
    backend_server: TestServer,
    tls_files: TLSFiles,
    leaf: trustme.LeafCert,
    client_ssl: ssl.SSLContext,
) -> None:
    admin_port = free_port()
    backend_url = f"http://127.0.0.1:{backend_server.port}"
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        backend=backend_url,
        tls=tls_files,
        admin=f"127.0.0.1:{admin_port}",
    )
    served = await serve(launch, config)
    workers = await asyncio.to_thread(served.process.workers)
    assert await asyncio.to_thread(listening_pids, workers, served.port) == workers
    admin = f"http://127.0.0.1:{admin_port}"

    async with aiohttp.ClientSession() as s:
        async with s.get(f"{admin}/health") as resp:
            assert resp.status == 200
            assert await resp.json() == {"status": "ok", "workers": 2}

        # Certificate expiry is exported on the first scrape (without /ready having run).
        async with s.get(f"{admin}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            before = parse_metrics(await resp.text())
        cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
        expiry = value(
            before,
            "teeproxy_certificate_expiry_timestamp_seconds",
            source=f"file:{tls_files.cert}",
        )
        assert expiry == cert.not_valid_after_utc.timestamp()

        # N requests, each on a new connection: the kernel spreads them over both workers
        # (all N on one worker has probability 2**-(N-1)), and the admin listener sums them.
        n = 40
        for _ in range(n):
            assert await fetch(f"{served.url}/x", client_ssl) == "hello"

        # A stream in flight shows as an open stream.
        connector = aiohttp.TCPConnector(ssl=client_ssl)
        async with (
            aiohttp.ClientSession(connector=connector) as c,
            c.get(f"{served.url}/slow?hold=1.5") as stream,
        ):
            assert await stream.content.readline() == b"first\n"
            await scrape_until(s, f"{admin}/metrics", "teeproxy_open_streams", 1.0)
            assert await stream.content.read() == b"last\n"

        after = await scrape_until(
            s, f"{admin}/metrics", "teeproxy_http_requests_total", n + 1, code="200"
        )
        assert value(after, "teeproxy_open_streams") == 0.0
        assert value(after, "teeproxy_http_requests_total", code="200") == n + 1
        assert value(after, "teeproxy_tls_handshakes_completed_total") == n + 1
        assert value(after, "teeproxy_http_request_duration_seconds_count") == n + 1
        assert value(after, "teeproxy_http_request_duration_seconds_bucket", le="+Inf") == n + 1
        # The slow stream took >= 1.5 s: it is above the 1 s bucket, the others below.
        assert value(after, "teeproxy_http_request_duration_seconds_bucket", le="1.0") == n
        assert value(after, "teeproxy_http_request_duration_seconds_sum") >= 1.5

        async with s.get(f"{admin}/ready") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["ready"] is True and body["reasons"] == []
        assert body["certificates"] == [
            {"source": f"file:{tls_files.cert}", "not_after": cert.not_valid_after_utc.isoformat()}
        ]

        # Backend down: not ready, and the reason names the backend.
        await backend_server.close()
        async with s.get(f"{admin}/ready") as resp:
            assert resp.status == 503
            body = await resp.json()
        assert body["ready"] is False
        assert len(body["reasons"]) == 1
        assert body["reasons"][0].startswith(f"backend {backend_url} unreachable")
        # Liveness is unaffected.
        async with s.get(f"{admin}/health") as resp:
            assert resp.status == 200


async def test_admin_on_unix_socket(
    *,
    launch: Launch,
    tmp_path: Path,
    backend_server: TestServer,
    tls_files: TLSFiles,
) -> None:
    sock = tmp_path / "admin.sock"
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        backend=f"http://127.0.0.1:{backend_server.port}",
        tls=tls_files,
        admin=f"unix:{sock}",
        workers=1,
    )
    await serve(launch, config, workers=1)
    mode = await asyncio.to_thread(lambda: stat.S_IMODE(sock.stat().st_mode))
    assert mode == 0o600
    connector = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=connector) as s:
        async with s.get("http://admin/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["workers"] == 1
        async with s.get("http://admin/ready") as resp:
            assert resp.status == 200, await resp.text()
        async with s.get("http://admin/metrics") as resp:
            assert resp.status == 200
            assert "teeproxy_open_streams" in await resp.text()
        async with s.get("http://admin/nothing-here") as resp:
            assert resp.status == 404


@pytest.mark.parametrize("address", ["0.0.0.0:9443", "192.0.2.10:9443", "[::]:9443"])
async def test_non_loopback_admin_is_refused(
    launch: Launch,
    tmp_path: Path,
    address: str,
) -> None:
    config = tmp_path / "c.toml"
    await asyncio.to_thread(config.write_text, f'[admin]\nlisten = "{address}"\n')
    p = await launch(["serve", "--config", str(config)])
    assert await p.wait_exit(30) == 2
    assert "config error: admin.listen: must be loopback or a unix socket" in p.output
    demo = await launch(
        [
            "demo",
            "--state-dir",
            str(tmp_path / "demo"),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            address,
        ]
    )
    assert await demo.wait_exit(30) == 2
    assert "admin.listen" in demo.output


async def test_admin_port_in_use_is_a_config_error(
    *,
    launch: Launch,
    tmp_path: Path,
    backend_server: TestServer,
    tls_files: TLSFiles,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = await asyncio.to_thread(
            write_config,
            tmp_path,
            backend=f"http://127.0.0.1:{backend_server.port}",
            tls=tls_files,
            admin=f"127.0.0.1:{port}",
        )
        p = await launch(["serve", "--config", str(config)])
        assert await p.wait_exit(30) == 2
    assert "config error: admin.listen: cannot listen on" in p.output
    assert "Traceback" not in p.output
