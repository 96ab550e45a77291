"""Cluster mode end to end: three ``teeproxy serve`` replicas, a three-member etcd, Pebble, anvil.

Real processes on loopback (simulated TEEs, one shared development attestation key, the
measurement set per replica by its simulated MRCONFIGID), governed by the policy contract
on anvil, ordering from Pebble with DNS-01 through Knot. In one scenario:

1. the fleet orders one certificate from Pebble, not three, and every replica serves it;
2. a replica whose measurement the policy does not allow never obtains the key (the
   members refuse it; it gives up after ``key_wait``);
3. a receipt of a streamed response served by one replica is fetched from another;
4. a revocation of one replica's measurement rotates the key to the others while requests
   to them keep succeeding (0 failures), and the revoked replica stays at the old epoch;
5. with one etcd member stopped, the fleet keeps serving and renews;
6. the renewer killed mid-renewal: another replica takes the lock after its lease expires,
   finishes the renewal, and no handshake in the whole run saw an expired certificate;
7. etcd holds no plaintext key material (every value scanned).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer
from cryptography.hazmat.primitives import serialization

from certmgr.keys import InsecureDevSealer, load_sealed_key
from tests.helpers.acme_harness import pebble_root
from tests.helpers.acme_peers import Knot, PebbleFactory
from tests.helpers.chain import AnvilFactory, anvil_account0, deploy_policy, owner_tx
from tests.helpers.cluster import (
    admin_json,
    admin_text,
    replica_toml,
    served_cert,
    shared_dev_key,
    simulated_mid,
)
from tests.helpers.etcd import EtcdCluster
from tests.helpers.ports import free_port
from tests.helpers.serve import REPO, Launch, Process

pytestmark = pytest.mark.slow

NAME = "fleet.example.test"
VALIDITY = 24  # seconds: Pebble's certificates renew about every 16 s


@pytest.fixture
async def llm_backend(aiohttp_server: AiohttpServer) -> str:
    """A backend answering a streamed chat completion (SSE) and "ok" elsewhere."""

    async def chat(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for word in ("hello", "fleet"):
            event = {"id": "c1", "model": "m", "choices": [{"delta": {"content": word}}]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def ok(_r: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_route("*", "/{tail:.*}", ok)
    srv = await aiohttp_server(app)
    return f"http://127.0.0.1:{srv.port}"


class Replica:
    def __init__(self, member: str, proc: Process, port: int, admin: int, state: Path) -> None:
        self.member = member
        self.proc = proc
        self.port = port
        self.admin = admin
        self.state = state

    def status(self) -> dict[str, object]:
        return admin_json(self.admin, "/cluster")


class Watch:
    """Every handshake to the live replicas, all run long: the certificate must be valid."""

    def __init__(self) -> None:
        self.replicas: list[Replica] = []
        self.handshakes = 0
        self.expired: list[str] = []
        self.serials: set[int] = set()

    async def run(self) -> None:
        for _ in range(100000):  # bounded; cancelled at the end of the test
            for r in list(self.replicas):
                cert = await asyncio.to_thread(served_cert, r.port, NAME)
                if cert is None or "Pebble" not in cert.issuer.rfc4514_string():
                    continue
                self.handshakes += 1
                self.serials.add(cert.serial_number)
                now = dt.datetime.now(dt.UTC)
                if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
                    self.expired.append(f"{r.member}: {cert.serial_number} at {now}")
            await asyncio.sleep(0.1)


async def wait_until(what: str, check: object, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):  # type: ignore[arg-type]
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"{what}: not within {within} s")


async def load(replicas: list[Replica], stop: asyncio.Event, ctx: ssl.SSLContext) -> list[int]:
    """Requests round robin to ``replicas`` until ``stop``: [ok, failed] (bounded count)."""
    counts = [0, 0]
    async with aiohttp.ClientSession() as s:
        for i in range(20000):
            if stop.is_set():
                break
            r = replicas[i % len(replicas)]
            try:
                async with s.get(
                    f"https://127.0.0.1:{r.port}/x",
                    ssl=ctx,
                    server_hostname=NAME,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    await resp.read()
                    counts[0 if resp.status == 200 else 1] += 1
            except (aiohttp.ClientError, OSError, TimeoutError):
                counts[1] += 1
            await asyncio.sleep(0.02)
    return counts


async def test_fleet_of_three(
    *,
    tmp_path: Path,
    knot: Knot,
    pebble_factory: PebbleFactory,
    anvil: AnvilFactory,
    etcd_cluster: EtcdCluster,
    launch: Launch,
    llm_backend: str,
) -> None:
    pebble = await asyncio.to_thread(pebble_factory, VALIDITY)
    node = await anvil()
    owner = await anvil_account0(node.url)
    contract = await deploy_policy(node.url, owner)
    key_file, pub = await asyncio.to_thread(shared_dev_key, tmp_path)
    mid = {t: await asyncio.to_thread(simulated_mid, key_file, t) for t in (1, 3, 9)}
    await owner_tx(node.url, contract, "allow", bytes.fromhex(mid[1][2:]), "build A")
    await owner_tx(node.url, contract, "allow", bytes.fromhex(mid[3][2:]), "build C")
    cluster = "fleet-" + os.urandom(3).hex()

    async def start(member: str, tag: int, **kw: object) -> Replica:
        state = tmp_path / member
        admin = free_port()
        text = replica_toml(
            state=state,
            member=member,
            tag=tag,
            key_file=key_file,
            pub=pub,
            pebble=pebble,
            knot=knot,
            backend=llm_backend,
            admin_port=admin,
            rpc=node.url,
            contract=contract,
            etcd=etcd_cluster.endpoints,
            cluster=cluster,
            names=(NAME,),
            **kw,  # type: ignore[arg-type]
        )
        cfg = tmp_path / f"{member}.toml"
        await asyncio.to_thread(cfg.write_text, text)
        p = await launch(["serve", "-c", str(cfg)])
        if kw.get("mode") == "monitor":
            return Replica(member, p, 0, admin, state)
        [m] = await p.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+)", within=60)
        return Replica(member, p, int(m.group(1)), admin, state)

    # 1. Three replicas start together; one orders, all serve the same certificate.
    t0 = time.monotonic()
    r1 = await start("r1", 1)
    r2, r3 = await asyncio.gather(start("r2", 1), start("r3", 3))
    fleet = [r1, r2, r3]
    watch = Watch()
    watch.replicas = list(fleet)
    watcher = asyncio.get_running_loop().create_task(watch.run())
    try:
        await wait_until(
            "every replica serves the Pebble certificate",
            lambda: (
                len({_serial(r) for r in fleet} - {None}) == 1
                and None not in {_serial(r) for r in fleet}
            ),
            60,
        )
        orders = sum(r.proc.output.count("ACME: ordering a certificate") for r in fleet)
        assert orders == 1, [r.proc.output[-3000:] for r in fleet]
        print(f"fleet of three serving one certificate after {time.monotonic() - t0:.1f} s")
        for r in fleet:
            st = await asyncio.to_thread(r.status)
            assert st["has_key"] is True and st["key_epoch"] == 1, st
        waits = [
            float(m.group(1))
            for r in (r2, r3)
            for m in await r.proc.wait_log(r"holds the cluster key \(epoch 1\) after ([\d.]+) s")
        ]
        print(f"newcomers held the key after {waits} s")

        # 2. A build the policy does not allow publishes its evidence and gets nothing.
        r4 = await start("r4", 9, mode="monitor", key_wait=6.0)
        assert await r4.proc.wait_exit(40) == 3
        assert "no member released the cluster key" in r4.proc.output
        assert any("refusing the key to r4" in r.proc.output for r in fleet)
        assert all(st["has_key"] for st in [await asyncio.to_thread(r.status) for r in fleet])

        # 3. A streamed response's receipt, served by r1, fetched from r2.
        root = await asyncio.to_thread(pebble_root, pebble)
        ctx = ssl.create_default_context(cadata=root.decode())
        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"https://127.0.0.1:{r1.port}/v1/chat/completions",
                json={"model": "m", "stream": True, "messages": []},
                ssl=ctx,
                server_hostname=NAME,
            ) as resp:
                assert resp.status == 200
                body = await resp.read()
                rid = resp.headers["Teeproxy-Receipt-Id"]
            assert b"fleet" in body
            async with s.get(
                f"https://127.0.0.1:{r2.port}/v1/receipts/{rid}", ssl=ctx, server_hostname=NAME
            ) as resp:
                assert resp.status == 200, await resp.text()
                receipt = await resp.json()
        assert receipt["model"] == "m" and receipt["responseHash"].startswith("0x")

        # 4. Revoking build C (r3) rotates the key to r1 and r2; requests to them all succeed.
        stop = asyncio.Event()
        loader = asyncio.get_running_loop().create_task(load([r1, r2], stop, ctx))
        await asyncio.sleep(1.0)
        t_revoke = time.monotonic()
        await owner_tx(node.url, contract, "revoke", bytes.fromhex(mid[3][2:]))
        watch.replicas = [r1, r2]
        await wait_until(
            "key rotated to epoch 2 on r1 and r2",
            lambda: all(r.status()["key_epoch"] == 2 for r in (r1, r2)),
            30,
        )
        rotated_after = time.monotonic() - t_revoke
        await asyncio.sleep(2.0)
        stop.set()
        ok, failed = await loader
        print(
            f"rotation {rotated_after:.1f} s after the revocation; load: {ok} ok, {failed} failed"
        )
        assert failed == 0 and ok > 50
        st3 = await asyncio.to_thread(r3.status)
        assert st3["key_epoch"] == 1, st3
        assert any("rotated the key to epoch 2" in r.proc.output for r in (r1, r2))
        status = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "cluster",
                "status",
                "--admin",
                f"127.0.0.1:{r1.admin}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        print(status.stdout)
        assert "key epoch:    2" in status.stdout
        assert re.search(r"r3 +0x[0-9a-f]{64}  refused, no key", status.stdout), status.stdout
        assert re.search(r"r2 +0x[0-9a-f]{64}  trusted, has key", status.stdout), status.stdout
        metrics = await asyncio.to_thread(admin_text, r1.admin, "/metrics")
        assert "teeproxy_cluster_key_epoch 2.0" in metrics

        # 5. One etcd member stopped: the fleet keeps serving and renews.
        before = set(watch.serials)
        await asyncio.to_thread(etcd_cluster.stop_member, 0)
        try:
            stop = asyncio.Event()
            loader = asyncio.get_running_loop().create_task(load([r1, r2], stop, ctx))
            await wait_until(
                "a renewal with one etcd member down",
                lambda: {_serial(r1), _serial(r2)} - before - {None} and _serial(r1) == _serial(r2),
                45,
            )
            stop.set()
            ok, failed = await loader
            print(f"renewed with etcd member 0 down; load: {ok} ok, {failed} failed")
            assert failed == 0
        finally:
            await asyncio.to_thread(etcd_cluster.start_member, 0)

        # 6. The renewer killed mid-renewal: the other replica finishes the renewal.
        since = {r.member: len(r.proc.lines) for r in (r1, r2)}
        renewer: Replica | None = None
        deadline = time.monotonic() + 45
        while renewer is None and time.monotonic() < deadline:
            for r in (r1, r2):
                if any("this member renews" in ln for ln in r.proc.lines[since[r.member] :]):
                    renewer = r
                    break
            await asyncio.sleep(0.02)
        assert renewer is not None, "no renewal began"
        survivor = r2 if renewer is r1 else r1
        watch.replicas = [survivor]
        for pid in [*await asyncio.to_thread(renewer.proc.workers), renewer.proc.pid]:
            os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        killed_serial = await asyncio.to_thread(_serial, survivor)
        mark = len(survivor.proc.lines)
        await survivor.proc.wait_log(r"published the fleet's certificate", since=mark, within=45)
        print(
            f"renewer {renewer.member} killed; {survivor.member} published after "
            f"{time.monotonic() - t_kill:.1f} s (lease TTL 3 s)"
        )
        await wait_until(
            "the survivor serves the renewed certificate",
            lambda: _serial(survivor) not in (None, killed_serial),
            20,
        )
        await asyncio.sleep(0.5)
        assert not watch.expired, watch.expired
        print(
            f"{watch.handshakes} handshakes checked, {len(watch.serials)} certificates, "
            "none expired"
        )

        # 7. etcd holds no plaintext key material.
        values = await asyncio.to_thread(etcd_cluster.dump)
        ours = [(k, v) for k, v in values if k.startswith(f"/teeproxy/{cluster}/".encode())]
        assert any(k.endswith(b"/data/cert") for k, _ in ours)
        secrets = []
        sealer = InsecureDevSealer()
        paths = await asyncio.to_thread(lambda: list((survivor.state / "acme").rglob("*.sealed")))
        for path in paths:
            key = await asyncio.to_thread(load_sealed_key, path, sealer)
            der = key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            scalar = key.private_numbers().private_value.to_bytes(32, "big")
            secrets += [der, scalar, base64.b64encode(der), scalar.hex().encode()]
        assert len(secrets) >= 8  # the certificate key and the account key
        for k, v in ours:
            assert b"PRIVATE KEY" not in v and b"-----BEGIN" not in v, k
            for secret in secrets:
                assert secret not in v, k
            if b"/data/" in k or b"/receipts/" in k:
                assert v.startswith(b"TPCV1\n"), k
        print(f"scanned {len(ours)} etcd values: no plaintext key material")
    finally:
        watcher.cancel()


def _serial(r: Replica) -> int | None:
    cert = served_cert(r.port, NAME)
    if cert is None or "Pebble" not in cert.issuer.rfc4514_string():
        return None
    return cert.serial_number
