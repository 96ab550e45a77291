"""``teeproxy serve`` and ``teeproxy demo`` as real processes: workers, signals, reload, demo.

Each test starts ``python -m proxy.cli`` on 127.0.0.1 with an ephemeral TLS port (read back
from the supervisor's log) and stops it, its workers included, by PID when it ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from proxy.tasks import spawn
from tests.helpers.ports import free_port
from tests.helpers.serve import Launch, TLSFiles, listening_pids, serve, wait_workers, write_config

pytestmark = pytest.mark.slow


# -- backends and clients ---------------------------------------------------------------------


async def _hello(_request: web.Request) -> web.Response:
    return web.Response(text="hello")


async def _stream(request: web.Request) -> web.StreamResponse:
    """``n`` lines ``chunk i``, ``interval`` s apart, then ``done``."""
    n = int(request.query.get("n", "10"))
    interval = float(request.query.get("interval", "0.2"))
    resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    for i in range(n):
        await resp.write(f"chunk {i}\n".encode())
        await asyncio.sleep(interval)
    await resp.write(b"done\n")
    await resp.write_eof()
    return resp


@pytest.fixture
async def backend(aiohttp_server: AiohttpServer) -> str:
    app = web.Application()
    app.router.add_get("/stream", _stream)
    app.router.add_get("/{tail:.*}", _hello)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture(scope="module")
def ca_b() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def leaf_b(ca_b: trustme.CA) -> trustme.LeafCert:
    return ca_b.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def trust_both(ca: trustme.CA, ca_b: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ca_b.configure_trust(ctx)
    return ctx


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def presented_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    """The certificate a fresh TLS handshake with 127.0.0.1:port presents."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    try:
        return bytes(writer.get_extra_info("ssl_object").getpeercert(binary_form=True))
    finally:
        writer.close()
        await writer.wait_closed()


async def get_text(url: str, ctx: ssl.SSLContext, *, new_connection: bool = True) -> str:
    connector = aiohttp.TCPConnector(ssl=ctx, force_close=new_connection)
    async with (
        aiohttp.ClientSession(connector=connector) as s,
        s.get(url) as resp,
    ):
        assert resp.status == 200, resp.status
        return await resp.text()


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes]:
    """One HTTP/1.1 GET on an open keep-alive connection (response has Content-Length)."""
    writer.write(b"GET /keepalive HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in head[1:] if h)}
    body = await reader.readexactly(int(headers["content-length"]))
    return int(head[0].split(" ", 2)[1]), body


@dataclass
class Load:
    """Requests issued continuously (half on new connections, half keep-alive) until stopped."""

    url: str
    ctx: ssl.SSLContext
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seen: Counter[bytes] = field(default_factory=Counter)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, clients: int = 4) -> None:
        for i in range(clients):
            self.tasks.append(spawn(self._run(new_connections=i % 2 == 0), f"load-{i}"))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def progress(self, n: int) -> None:
        target = self.ok + len(self.failures) + n
        async with asyncio.timeout(20):
            while self.ok + len(self.failures) < target:  # noqa: ASYNC110 - other tasks count
                await asyncio.sleep(0.01)

    async def _run(self, *, new_connections: bool) -> None:
        connector = aiohttp.TCPConnector(ssl=self.ctx, force_close=new_connections, limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            while not self.stop.is_set():
                try:
                    async with session.get(f"{self.url}/load") as resp:
                        body = await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, OSError) as e:
                    self.failures.append(repr(e))
                    continue
                if status == 200 and body == b"hello":
                    self.ok += 1
                else:
                    self.failures.append(f"{status} {body[:80]!r}")


# -- tests --------------------------------------------------------------------------------


async def test_serve_with_invalid_config_exits_2_naming_the_field(
    launch: Launch, tmp_path: Path
) -> None:
    config = tmp_path / "bad.toml"
    await asyncio.to_thread(config.write_text, '[backend]\nurl = "ftp://127.0.0.1:21"\n')
    p = await launch(["serve", "--config", str(config)])
    assert await p.wait_exit(30) == 2
    assert "config error: backend.url:" in p.output


async def test_serve_with_unservable_certificate_exits_2_before_starting_workers(
    launch: Launch, tmp_path: Path, backend: str
) -> None:
    tls = TLSFiles(tmp_path / "absent-cert.pem", tmp_path / "absent-key.pem")
    config = await asyncio.to_thread(write_config, tmp_path, backend=backend, tls=tls)
    p = await launch(["serve", "--config", str(config)])
    assert await p.wait_exit(30) == 2
    assert "config error: tls.certificates:" in p.output
    assert "absent-cert.pem" in p.output
    assert "Traceback" not in p.output


_RETAIN_DEFAULT = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "67108864"}


def _malloc_env(pid: int) -> dict[str, str]:
    """The glibc allocator variables process ``pid`` was started with."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = (e.decode().partition("=") for e in entries if e.startswith(b"MALLOC_"))
    return {name: value for name, _, value in pairs}


async def test_two_workers_serve_and_a_killed_worker_is_restarted(
    *,
    launch: Launch,
    tmp_path: Path,
    backend: str,
    tls_files: TLSFiles,
    client_ssl: ssl.SSLContext,
) -> None:
    admin = tmp_path / "admin.sock"
    config = await asyncio.to_thread(
        write_config, tmp_path, backend=backend, tls=tls_files, admin=f"unix:{admin}"
    )
    served = await serve(launch, config)
    p = served.process
    workers = await asyncio.to_thread(p.workers)
    assert len(workers) == 2
    assert await asyncio.to_thread(listening_pids, workers, served.port) == workers
    for _ in range(10):
        assert await get_text(f"{served.url}/x", client_ssl) == "hello"
    # Each worker's glibc keeps freed body buffers for reuse (limits.retain_free_memory);
    # the supervisor's environment is left as it was.
    assert (
        await asyncio.to_thread(lambda: [_malloc_env(w) for w in workers]) == [_RETAIN_DEFAULT] * 2
    )
    assert await asyncio.to_thread(_malloc_env, p.pid) == {}

    victim = workers[0]
    os.kill(victim, signal.SIGKILL)  # a worker: ours (child of our child), by PID
    await p.wait_log(rf"worker {victim} exited with -9: restarting")
    # The surviving worker carries the service meanwhile.
    for _ in range(10):
        assert await get_text(f"{served.url}/x", client_ssl) == "hello"

    restarted = await wait_workers(p, served.port, 2, victim)
    assert (
        await asyncio.to_thread(lambda: [_malloc_env(w) for w in restarted])
        == [_RETAIN_DEFAULT] * 2
    )
    async with (
        aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(admin))) as s,
        s.get("http://admin/health") as resp,
    ):
        assert resp.status == 200
        assert (await resp.json())["workers"] == 2
    # Both workers accept connections again (the kernel spreads them over both sockets).
    for _ in range(20):
        assert await get_text(f"{served.url}/x", client_ssl) == "hello"
    assert p.proc.poll() is None


async def test_sigterm_drains_streams_within_grace_then_exits_0(
    *,
    launch: Launch,
    tmp_path: Path,
    backend: str,
    tls_files: TLSFiles,
    client_ssl: ssl.SSLContext,
) -> None:
    grace = 2.5
    config = await asyncio.to_thread(
        write_config, tmp_path, backend=backend, tls=tls_files, drain_grace=grace
    )
    served = await serve(launch, config)
    p = served.process

    first_chunk = {"short": asyncio.Event(), "long": asyncio.Event()}

    async def read_stream(name: str, n: int, interval: float) -> tuple[list[str], BaseException]:
        lines: list[str] = []
        connector = aiohttp.TCPConnector(ssl=client_ssl)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as s,
                s.get(f"{served.url}/stream?n={n}&interval={interval}") as resp,
            ):
                assert resp.status == 200
                async for line in resp.content:
                    lines.append(line.decode())
                    first_chunk[name].set()
        except (aiohttp.ClientError, OSError) as e:
            return lines, e
        return lines, StopIteration()

    # ~2 s of streaming: finishes inside the grace. ~10 s: cut when the grace ends.
    short = spawn(read_stream("short", 8, 0.25), "short-stream")
    long = spawn(read_stream("long", 100, 0.1), "long-stream")
    async with asyncio.timeout(10):
        await first_chunk["short"].wait()
        await first_chunk["long"].wait()

    since = len(p.lines)
    await asyncio.to_thread(p.send, signal.SIGTERM)
    sent = time.monotonic()
    await p.wait_log(r"worker \d+ draining", count=2, since=since, within=10)
    # The listeners are closed: a new connection is refused while the streams still run.
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", served.port)
    assert not short.done()

    short_lines, short_end = await short
    assert isinstance(short_end, StopIteration), short_end
    assert short_lines == [f"chunk {i}\n" for i in range(8)] + ["done\n"]

    long_lines, long_end = await long
    cut = time.monotonic() - sent
    assert isinstance(long_end, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError), (
        long_end
    )
    assert 5 < len(long_lines) < 100
    assert "done\n" not in long_lines
    # Cut when the grace ran out: not before (in-flight streams get their grace), and not
    # when the stream would have ended on its own (~10 s after it began).
    assert grace - 0.5 <= cut < grace + 4, cut

    assert await p.wait_exit(grace + 10) == 0
    assert time.monotonic() - sent < grace + 5
    assert await asyncio.to_thread(p.workers) == []


async def test_sighup_reloads_certificate_without_failed_requests(
    *,
    launch: Launch,
    tmp_path: Path,
    backend: str,
    tls_files: TLSFiles,
    leaf: trustme.LeafCert,
    leaf_b: trustme.LeafCert,
    trust_both: ssl.SSLContext,
) -> None:
    config = await asyncio.to_thread(write_config, tmp_path, backend=backend, tls=tls_files)
    served = await serve(launch, config)
    p = served.process
    assert await presented_cert(served.port, trust_both) == der(leaf)

    reader, writer = await asyncio.open_connection(
        "127.0.0.1", served.port, ssl=trust_both, server_hostname="localhost"
    )
    load = Load(served.url, trust_both)
    try:
        assert await raw_get(reader, writer) == (200, b"hello")
        load.start()
        await load.progress(20)

        await asyncio.to_thread(tls_files.write, leaf_b)
        since = len(p.lines)
        await asyncio.to_thread(p.send, signal.SIGHUP)
        await p.wait_log(r"worker \d+ reloaded \(1 certificates\)", count=2, since=since)
        await load.progress(20)

        # Every new handshake, whichever worker takes it, presents the new certificate.
        for _ in range(10):
            assert await presented_cert(served.port, trust_both) == der(leaf_b)
        # The keep-alive connection opened before the reload continues, on its old session.
        assert await raw_get(reader, writer) == (200, b"hello")
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert peer == der(leaf)
    finally:
        await load.finish()
        writer.close()
        await writer.wait_closed()
    assert load.failures == [], load.failures[:5]
    assert load.ok >= 40
    assert "server.listen changed" not in p.output
    assert "ERROR" not in p.output, p.output[-3000:]


async def test_sighup_with_invalid_config_keeps_serving_the_old_one(
    *,
    launch: Launch,
    tmp_path: Path,
    backend: str,
    tls_files: TLSFiles,
    leaf: trustme.LeafCert,
    leaf_b: trustme.LeafCert,
    trust_both: ssl.SSLContext,
) -> None:
    config = await asyncio.to_thread(
        write_config, tmp_path, backend=backend, tls=tls_files, workers=1
    )
    served = await serve(launch, config, workers=1)
    p = served.process
    good = await asyncio.to_thread(config.read_text)

    # 1. Not a valid config: the supervisor refuses it and names the field.
    await asyncio.to_thread(config.write_text, good.replace("workers = 1", 'workers = "x"'))
    since = len(p.lines)
    await asyncio.to_thread(p.send, signal.SIGHUP)
    [m] = await p.wait_log(r"SIGHUP: config invalid, keeping the running one: (.*)", since=since)
    assert m.group(1).startswith("server.workers:")
    assert await get_text(f"{served.url}/x", trust_both) == "hello"
    assert await presented_cert(served.port, trust_both) == der(leaf)

    # 2. Valid TOML, but the certificate it names does not exist: the supervisor refuses it
    # too, so a worker restarted later still starts with the running (good) config.
    missing = tmp_path / "missing.pem"
    await asyncio.to_thread(config.write_text, good.replace(str(tls_files.cert), str(missing)))
    since = len(p.lines)
    await asyncio.to_thread(p.send, signal.SIGHUP)
    [m] = await p.wait_log(r"SIGHUP: config invalid, keeping the running one: (.*)", since=since)
    assert m.group(1).startswith("tls.certificates:") and "missing.pem" in m.group(1)
    assert await get_text(f"{served.url}/x", trust_both) == "hello"
    [victim] = await asyncio.to_thread(p.workers)
    os.kill(victim, signal.SIGKILL)  # a worker: ours (child of our child), by PID
    await p.wait_log(rf"worker {victim} exited with -9: restarting", since=since)
    await wait_workers(p, served.port, 1, victim)
    assert await get_text(f"{served.url}/x", trust_both) == "hello"
    assert await presented_cert(served.port, trust_both) == der(leaf)

    # 3. A good config again, with a new certificate: reloaded.
    await asyncio.to_thread(tls_files.write, leaf_b)
    await asyncio.to_thread(config.write_text, good)
    since = len(p.lines)
    await asyncio.to_thread(p.send, signal.SIGHUP)
    await p.wait_log(r"worker \d+ reloaded", since=since)
    assert await presented_cert(served.port, trust_both) == der(leaf_b)
    assert p.proc.poll() is None


async def test_demo_serves_models_and_streaming_chat_with_sealed_dev_ca(
    launch: Launch, tmp_path: Path
) -> None:
    state = tmp_path / "demo"
    admin_port = free_port()
    p = await launch(
        [
            "demo",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            f"127.0.0.1:{admin_port}",
            "--tokens-per-second",
            "200",
        ]
    )
    [m] = await p.wait_log(r"teeproxy demo is running: (https://localhost:(\d+))")
    url, port = m.group(1), int(m.group(2))
    [root_line] = await p.wait_log(r"curl --cacert (\S+) (\S+)/v1/models")
    root = Path(root_line.group(1))
    assert root == state / "dev-ca" / "root.pem"
    assert root_line.group(2) == url
    assert f"http://127.0.0.1:{admin_port}/ready" in p.output

    ctx = await asyncio.to_thread(ssl.create_default_context, cafile=str(root))
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/v1/models", ssl=ctx) as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["object"] == "list"
            assert [m["id"] for m in body["data"]] == ["teeproxy-demo"]
        request = {
            "model": "teeproxy-demo",
            "stream": True,
            "max_tokens": 6,
            "messages": [{"role": "user", "content": "hello"}],
        }
        async with s.post(f"{url}/v1/chat/completions", json=request, ssl=ctx) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            events = [
                line[6:].decode().strip()
                async for line in resp.content
                if line.startswith(b"data: ")
            ]
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        assert text.split() == ["You", "said:", "hello", "You", "said:", "hello"]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        async with s.get(f"http://127.0.0.1:{admin_port}/ready") as resp:
            assert resp.status == 200, await resp.text()
    assert port != 0

    # The development CA's private keys exist on disk only sealed, and only owner-readable.
    def inspect_state() -> None:
        sealed = state / "dev-ca" / "root.key.sealed"
        assert sealed.read_bytes().startswith(b"TPSEAL1")
        assert stat.S_IMODE(sealed.stat().st_mode) == 0o600
        leaf_key = state / "dev-ca" / "leaf.key.sealed"
        assert leaf_key.read_bytes().startswith(b"TPSEAL1")
        assert stat.S_IMODE(leaf_key.stat().st_mode) == 0o600
        for path in state.rglob("*"):
            if path.is_file():
                assert b"PRIVATE KEY" not in path.read_bytes(), path

    await asyncio.to_thread(inspect_state)

    await asyncio.to_thread(p.send, signal.SIGTERM)
    assert await p.wait_exit(20) == 0
