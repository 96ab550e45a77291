"""Governance end to end: a real ``teeproxy serve`` in enforce mode against anvil, governed
with the ``teeproxy policy`` CLI and an encrypted keystore; and the worker gate in process.

- three RPC endpoints, quorum 2: anvil, an honest relay and a lying relay; the liar is
  outvoted and reported on /ready and in /metrics;
- the proxy serves while its measurement is allowed;
- the operator revokes it (CLI): the proxy stops serving within two refresh periods, and
  /ready and /metrics say why;
- re-allowing it (CLI) makes it serve again (resume_when_allowed = true, the default);
- an RPC outage longer than max_staleness makes it fail closed.
- in process: a request in flight when the revocation lands gets 503 with the reason, the
  listener closes, and it reopens on the same port when allowed again.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.policy.model import PolicyDecision, PolicyStatus
from proxy.config import GovernanceConfig
from proxy.control.governance import next_gate
from proxy.dataplane.gate import WorkerGate
from proxy.dataplane.worker import Worker
from proxy.gatestate import state_path
from tests.helpers.chain import AnvilFactory, LyingFactory, fund
from tests.helpers.ports import free_port
from tests.helpers.proxies import make_config, store_from_leaf
from tests.helpers.serve import REPO, Launch, TLSFiles, serve, write_config

pytestmark = pytest.mark.slow

MID = "0x" + "5e" * 32
PASSWORD = "e2e-keystore-password"
REFRESH = 0.5
STALENESS = 3.0
SLACK = 5.0  # process scheduling on a busy 2-core machine, on top of the protocol bound


async def policy_cli(*args: str, keystore: Path | None = None) -> str:
    """Run ``teeproxy policy ...`` (the real CLI) with the keystore password in the env."""
    argv = [sys.executable, "-m", "proxy.cli", "policy", *args]
    if keystore is not None:
        argv[4:4] = ["--keystore", str(keystore)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=REPO,
        env=dict(os.environ, TEEPROXY_POLICY_PASSWORD=PASSWORD),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, (args, out.decode(), err.decode())
    return out.decode()


async def probe(url: str, client_ssl: ssl.SSLContext) -> str:
    """'200', '503:<body>' or 'refused': what a new client gets right now."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, ssl=client_ssl, timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            body = await r.text()
            return str(r.status) if r.status == 200 else f"{r.status}:{body}"
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError):
        return "refused"


async def wait_for(url: str, client_ssl: ssl.SSLContext, want: str, within: float) -> str:
    deadline = time.monotonic() + within
    seen = ""
    while time.monotonic() < deadline:
        seen = await probe(url, client_ssl)
        if seen.startswith(want) or (want == "stopped" and seen != "200"):
            return seen
        await asyncio.sleep(0.1)
    pytest.fail(f"still {seen!r} after {within} s, expected {want}")


@pytest.fixture
async def backend(aiohttp_server: AiohttpServer) -> str:
    async def hello(_r: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


async def test_revoke_reallow_and_outage_on_anvil(
    *,
    anvil: AnvilFactory,
    lying_rpc: LyingFactory,
    launch: Launch,
    tls_files: TLSFiles,
    backend: str,
    client_ssl: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    node = await anvil()
    keystore = tmp_path / "operator.keystore.json"
    out = await policy_cli("create-keystore", str(keystore))
    operator = out.split("address ")[1].strip()
    assert "0x" in operator and PASSWORD not in await asyncio.to_thread(keystore.read_text)
    await fund(node.url, operator)
    out = await policy_cli("--rpc", node.url, "deploy", keystore=keystore)
    contract = out.split("contract:")[1].split()[0]
    target = ("--rpc", node.url, "--address", contract)
    out = await policy_cli(*target, "allow", MID, "--label", "e2e build", keystore=keystore)
    assert "version:     1" in out

    # Three endpoints, quorum 2: anvil, an honest relay, and a relay that lies about eth_call.
    honest = await lying_rpc(node.url, lie=False)
    liar = await lying_rpc(node.url)
    admin = f"127.0.0.1:{free_port()}"
    extra = (
        "[governance]\nmode = 'enforce'\nquorum = 2\n"
        f"rpc_urls = ['{node.url}', '{liar.url}', '{honest.url}']\n"
        f"contract = '{contract}'\nself_measurement = '{MID}'\n"
        f"refresh_period = {REFRESH}\nmax_staleness = {STALENESS}\nrpc_timeout = 0.5\n"
    )
    config = await asyncio.to_thread(
        write_config, tmp_path, backend=backend, tls=tls_files, workers=1, admin=admin, extra=extra
    )
    served = await serve(launch, config, workers=1)
    url = f"{served.url}/v1/models"
    assert await probe(url, client_ssl) == "200"
    async with aiohttp.ClientSession() as s, s.get(f"http://{admin}/ready") as r:
        ready = await r.json()
        assert r.status == 200, ready
    assert ready["policy"]["verdict"] == "allowed"
    assert ready["policy"]["version"] == 1
    # The liar is outvoted and reported (admin and metrics: endpoint index 1).
    assert ready["policy"]["endpoints"]["dissenting"] == [liar.url]
    assert liar.lies >= 1

    # The operator revokes this build: stopped within two refresh periods (+ scheduling).
    out = await policy_cli(*target, "revoke", MID, keystore=keystore)
    assert "version:     2" in out
    seen = await wait_for(url, client_ssl, "stopped", 2 * REFRESH + SLACK)
    assert seen == "refused" or ("503" in seen and "not allowed" in seen)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{admin}/ready") as r:
            ready = await r.json()
            assert r.status == 503
        assert any("not allowed by policy version 2" in x for x in ready["reasons"]), ready
        async with s.get(f"http://{admin}/metrics") as r:
            metrics = await r.text()
    assert "teeproxy_policy_serving 0.0" in metrics
    assert 'teeproxy_policy_endpoint_faults_total{endpoint="1",kind="dissent"}' in metrics
    assert "teeproxy_policy_version 2.0" in metrics

    # Allowed again: serves again (resume_when_allowed = true).
    await policy_cli(*target, "allow", MID, "--label", "e2e build", keystore=keystore)
    assert await wait_for(url, client_ssl, "200", 2 * REFRESH + SLACK) == "200"

    # The chain behind every endpoint goes silent for longer than max_staleness (the liar
    # still answers eth_call, but alone it is no quorum): fail closed.
    node.pause()
    try:
        await wait_for(url, client_ssl, "stopped", STALENESS + 2 * REFRESH + SLACK)
        async with aiohttp.ClientSession() as s, s.get(f"http://{admin}/ready") as r:
            ready = await r.json()
        assert r.status == 503
        assert any("old" in x and "bound" in x for x in ready["reasons"]), ready
    finally:
        node.resume()


# -- the worker gate in process -----------------------------------------------------------------


@pytest.fixture
async def slow_backend(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[str, asyncio.Event]]:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/slow":
            arrived.set()
            await release.wait()
        if request.path == "/stream":  # headers and a first chunk, then silence
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(b"data: first\n\n")
            arrived.set()
            await release.wait()
            return resp
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    yield f"http://127.0.0.1:{server.port}", arrived
    release.set()


def _publish(path: Path, allowed: bool) -> None:
    g = GovernanceConfig(mode="enforce")
    verdict = PolicyStatus.ALLOWED if allowed else PolicyStatus.NOT_ALLOWED
    reason = "ok" if allowed else "measurement 0x5e.. is not allowed by policy version 7"
    state = next_gate(
        g, PolicyDecision(verdict, reason, version=7), None, b"\x5e" * 32, time.time()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(state.to_json())


async def test_in_flight_request_gets_503_listener_closes_reopens_streams_cut(
    slow_backend: tuple[str, asyncio.Event],
    leaf: trustme.LeafCert,
    client_ssl: ssl.SSLContext,
    tmp_path: Path,
) -> None:
    backend_url, arrived = slow_backend
    extra = (
        "[governance]\nmode = 'enforce'\nrpc_urls = ['http://127.0.0.1:1']\n"
        "contract = '0x5FbDB2315678afecb367f032d93F642f64180aa3'\nself_measurement = 'dev'\n"
        "refresh_period = 0.4\nmax_staleness = 30.0\nrpc_timeout = 0.5\n"
    )
    cfg = await asyncio.to_thread(make_config, backend_url, extra, tmp_path)
    path = state_path(cfg)
    await asyncio.to_thread(_publish, path, True)
    store = await asyncio.to_thread(store_from_leaf, leaf)
    worker = Worker(cfg, store, reuse_port=False)
    worker.gate = WorkerGate(cfg)
    await worker.start()
    try:
        url = f"https://localhost:{worker.ports[0]}"
        assert await probe(f"{url}/fast", client_ssl) == "200"
        async with aiohttp.ClientSession() as s:
            pending = asyncio.ensure_future(s.get(f"{url}/slow", ssl=client_ssl))
            await asyncio.wait_for(arrived.wait(), 5)
            await asyncio.to_thread(_publish, path, False)  # revoked while in flight
            resp = await asyncio.wait_for(pending, 5)
            body = await resp.json()
            assert resp.status == 503
            assert body["error"]["type"] == "policy_denied"
            assert "not allowed by policy version 7" in body["error"]["message"]
            assert resp.headers["Retry-After"]
        assert await wait_for(f"{url}/fast", client_ssl, "refused", 5) == "refused"
        await asyncio.to_thread(_publish, path, True)
        assert await wait_for(f"{url}/fast", client_ssl, "200", 5) == "200"
        assert worker.ports == [int(url.rsplit(":", 1)[1])]

        # A stream already under way when the revocation lands is cut, not ended cleanly:
        # a truncated body must not look complete.
        arrived.clear()
        async with aiohttp.ClientSession() as s, s.get(f"{url}/stream", ssl=client_ssl) as r:
            assert r.status == 200
            await asyncio.wait_for(arrived.wait(), 5)
            assert await r.content.readuntil(b"\n\n") == b"data: first\n\n"
            await asyncio.to_thread(_publish, path, False)
            with pytest.raises(aiohttp.ClientPayloadError):
                async with asyncio.timeout(5):
                    await r.content.read()
    finally:
        await worker.drain(grace=1.0)


async def test_demo_style_embedded_chain_governed_by_the_cli(tmp_path: Path) -> None:
    """The embedded chain serves real JSON-RPC: the CLI revokes on it with its dev keystore."""
    from certmgr.policy.devchain import DEV_KEYSTORE_PASSWORD, EmbeddedChain
    from certmgr.policy.rpc import check_measurement

    mid = b"\x77" * 32
    chain = await EmbeddedChain.start(tmp_path / "governance", allow=((mid, "dev"),))
    try:
        assert (await check_measurement([chain.url], chain.address, mid)).allowed
        info = json.loads(
            await asyncio.to_thread((tmp_path / "governance" / "embedded-chain.json").read_text)
        )
        assert info["contract"] == chain.address
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "proxy.cli",
            "policy",
            "--embedded",
            str(tmp_path),
            "revoke",
            "0x" + mid.hex(),
            cwd=REPO,
            env=dict(os.environ, TEEPROXY_POLICY_PASSWORD=DEV_KEYSTORE_PASSWORD),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "version:     2" in out.decode()
        verdict = await check_measurement([chain.url], chain.address, mid)
        assert verdict.decision.verdict is PolicyStatus.NOT_ALLOWED
    finally:
        await chain.stop()
