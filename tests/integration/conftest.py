"""Fixtures for the integration tests: backends, real processes and real peers on loopback.

- ``recording_backend``, ``upload_probe``, ``raw_backend``: backends that show what the proxy
  sent (tests/helpers/backends.py);
- ``launch``, ``tls_files``: ``python -m proxy.cli ...`` processes, stopped by PID at
  teardown, and a trustme certificate on disk for them (tests/helpers/serve.py);
- ``anvil``, ``lying_rpc``: Ethereum nodes and a lying JSON-RPC relay (tests/helpers/chain.py);
- ``knot``, ``pebble_factory``, ``acme_backend``: the ACME peers and the backend behind the
  ACME-managed proxy (tests/helpers/acme_peers.py);
- ``etcd_cluster``: one three-member etcd cluster for the whole run, started when a test
  first asks for it (tests/helpers/etcd.py); each test uses its own key prefix;
- ``release_build``: one real, full ``build_image`` of a git checkout of this tree for the
  whole run (a minute or more on 2 cores), shared by the image, verify-build and release
  end-to-end tests, which copy its layout before they add to it (tests/helpers/release.py).

Every server binds 127.0.0.1 and every process is stopped by its PID when the test ends.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.release.image import build_image
from tests.helpers.acme_peers import TSIG_ENV, Knot, Pebble, PebbleFactory, start_knot, start_pebble
from tests.helpers.backends import (
    RawBackend,
    RawBackendFactory,
    RawHandler,
    Recorder,
    UploadProbe,
    record_request,
)
from tests.helpers.chain import (
    ANVIL,
    ROOT,
    Anvil,
    AnvilFactory,
    LyingFactory,
    LyingRpc,
    start_anvil,
    start_lying_rpc,
    stop_anvil,
)
from tests.helpers.etcd import EtcdCluster, start_etcd_cluster
from tests.helpers.release import ReleaseBuild, checkout
from tests.helpers.serve import Launch, Process, TLSFiles

# -- backends ------------------------------------------------------------------------------


@pytest.fixture
async def recording_backend(aiohttp_server: AiohttpServer) -> Recorder:
    """An aiohttp backend (no request decompression) recording every request."""
    rec = Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await record_request(rec, request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app, auto_decompress=False)
    rec.url = f"http://127.0.0.1:{server.port}"
    return rec


@pytest.fixture
async def upload_probe(aiohttp_server: AiohttpServer) -> UploadProbe:
    probe = UploadProbe()

    async def handler(request: web.Request) -> web.StreamResponse:
        probe.head.set()
        try:
            body = await request.read()
        except BaseException as e:
            probe.outcomes.append(f"aborted:{type(e).__name__}")
            raise
        else:
            probe.outcomes.append(f"complete:{len(body)}")
        finally:
            probe.done.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = await aiohttp_server(app)  # handler_cancellation: a cut upload cancels it
    probe.url = f"http://127.0.0.1:{server.port}"
    return probe


@pytest.fixture
async def raw_backend() -> AsyncIterator[RawBackendFactory]:
    """Start plain TCP servers on loopback: ``await raw_backend(handler)``."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(handler: RawHandler) -> RawBackend:
        backend = RawBackend(port=0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            backend.connections += 1
            writers.append(writer)
            try:
                await handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(srv)
        backend.port = srv.sockets[0].getsockname()[1]
        return backend

    yield start
    for w in writers:
        w.close()
    for srv in servers:
        srv.close()
        await srv.wait_closed()


# -- teeproxy processes --------------------------------------------------------------------


@pytest.fixture
async def launch() -> AsyncIterator[Launch]:
    """Start ``python -m proxy.cli ARGS``; every process is stopped at teardown."""
    started: list[Process] = []

    async def start(args: list[str]) -> Process:
        p = await asyncio.to_thread(Process, args)
        started.append(p)
        return p

    yield start
    for p in started:
        await asyncio.to_thread(p.stop)


@pytest.fixture
async def tls_files(tmp_path: Path, leaf: trustme.LeafCert) -> TLSFiles:
    files = TLSFiles(tmp_path / "cert.pem", tmp_path / "key.pem")
    await asyncio.to_thread(files.write, leaf)
    return files


# -- Ethereum peers ------------------------------------------------------------------------


@pytest.fixture
async def anvil() -> AsyncIterator[AnvilFactory]:
    if not await asyncio.to_thread(ANVIL.exists):
        pytest.fail(f"anvil not installed: run `npm ci --prefix {ROOT / 'contracts_abi'}`")
    nodes: list[Anvil] = []

    async def start() -> Anvil:
        return await start_anvil(nodes)

    yield start
    for node in nodes:
        await stop_anvil(node)


@pytest.fixture
async def lying_rpc() -> AsyncIterator[LyingFactory]:
    """``await lying_rpc(upstream_url)``: a relay answering every ``eth_call`` with a forged
    policy (version 999, one forged id), everything else relayed unchanged.
    ``lie=False`` gives an honest relay (a second, independent-looking endpoint)."""
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(upstream: str, *, lie: bool = True) -> LyingRpc:
        return await start_lying_rpc(upstream, lie=lie, runners=runners, sessions=sessions)

    yield start
    for runner in runners:
        await runner.cleanup()
    for s in sessions:
        await s.close()


# -- ACME peers ----------------------------------------------------------------------------


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[Knot]:
    k = start_knot(tmp_path / "knot")
    os.environ[TSIG_ENV] = k.secret
    try:
        yield k
    finally:
        k.stop()
        os.environ.pop(TSIG_ENV, None)


@pytest.fixture
def pebble_factory(tmp_path: Path, knot: Knot) -> Iterator[PebbleFactory]:
    """``pebble_factory(**env)`` starts a Pebble resolving through ``knot``."""
    started: list[Pebble] = []

    def make(validity: int = 0, eab: dict[str, str] | None = None, **faults: str) -> Pebble:
        p = start_pebble(tmp_path / f"pebble{len(started)}", knot, validity, eab, **faults)
        started.append(p)
        return p

    try:
        yield make
    finally:
        for p in started:
            p.stop()


@pytest.fixture
async def acme_backend(aiohttp_server: AiohttpServer) -> str:
    """The backend behind the ACME-managed proxy: "backend ok" on every path."""

    async def ok(_r: web.Request) -> web.Response:
        return web.Response(text="backend ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    srv = await aiohttp_server(app)
    return f"http://127.0.0.1:{srv.port}"


# -- etcd ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def etcd_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """Three etcd members on loopback, shared by every test that asks (about 1 s to start).

    A test that stops a member restarts it before it ends (``start_member``)."""
    cluster = start_etcd_cluster(tmp_path_factory.mktemp("etcd"))
    try:
        yield cluster
    finally:
        cluster.stop()


# -- the release image ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def release_build(tmp_path_factory: pytest.TempPathFactory) -> ReleaseBuild:
    root = tmp_path_factory.mktemp("release")
    source = root / "src"
    commit = checkout(source)
    work = root / "work"
    # SOURCE_DATE_EPOCH from the checkout's commit time, as a release build takes it.
    build = build_image(source, root / "image", work_dir=work)
    return ReleaseBuild(source, commit, build, work)
