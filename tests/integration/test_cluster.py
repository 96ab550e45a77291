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

The fleet shares one receipt signing key (``[cluster] shared_signing_key``): receipts from
two replicas name the same signer, the one their evidence attests; the revocation in 4.
replaces it (later receipts name the new one, requests keep succeeding, the old receipts
still verify off chain); ``policy register-signer --cluster-members`` refuses the set while
the revoked replica is a member, then registers the new signer once, and ``policy signer``
shows it. The scan in 7. covers both signing keys.
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
from certmgr.receipts.format import Receipt
from certmgr.receipts.signing import SHARED_KEY_FILE, SHARED_SEALING_LABEL, signing_dir
from certmgr.receipts.verify import verify_receipt
from proxy.cli.main import main
from tests.helpers.acme_harness import pebble_root
from tests.helpers.acme_peers import Knot, PebbleFactory
from tests.helpers.chain import (
    AnvilFactory,
    anvil_account0,
    deploy_policy,
    fund,
    new_account,
    owner_tx,
)
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
PASSWORD = "operator-password"
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
    """Requests round robin to ``replicas`` until ``stop``, every fourth a signed (streamed)
    chat completion: [ok, failed] (bounded count)."""
    counts = [0, 0]
    async with aiohttp.ClientSession() as s:
        for i in range(20000):
            if stop.is_set():
                break
            r = replicas[i % len(replicas)]
            try:
                if i % 4 == 3:
                    _, body, _ = await chat(s, r, ctx)
                    counts[0 if body.endswith(b"data: [DONE]\n\n") else 1] += 1
                    continue
                async with s.get(
                    f"https://127.0.0.1:{r.port}/x",
                    ssl=ctx,
                    server_hostname=NAME,
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    await resp.read()
                    counts[0 if resp.status == 200 else 1] += 1
            except (aiohttp.ClientError, OSError, TimeoutError, AssertionError):
                counts[1] += 1
            await asyncio.sleep(0.02)
    return counts


async def chat(
    s: aiohttp.ClientSession, r: Replica, ctx: ssl.SSLContext
) -> tuple[bytes, bytes, str]:
    """A streamed chat completion through ``r``: (request body, response body, receipt id)."""
    request = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    async with s.post(
        f"https://127.0.0.1:{r.port}/v1/chat/completions",
        data=request,
        headers={"Content-Type": "application/json"},
        ssl=ctx,
        server_hostname=NAME,
        timeout=aiohttp.ClientTimeout(total=5),
    ) as resp:
        assert resp.status == 200
        return request, await resp.read(), resp.headers["Teeproxy-Receipt-Id"]


async def fetch_receipt(
    s: aiohttp.ClientSession, r: Replica, rid: str, ctx: ssl.SSLContext
) -> Receipt:
    async with s.get(
        f"https://127.0.0.1:{r.port}/v1/receipts/{rid}", ssl=ctx, server_hostname=NAME
    ) as resp:
        assert resp.status == 200, await resp.text()
        return Receipt.from_json(await resp.read())


class Operator:
    """``teeproxy policy ...`` as the contract's owner (in process, encrypted keystore)."""

    def __init__(self, rpc: str, contract: str, keystore: Path, capsys: pytest.CaptureFixture[str]):
        self.argv = ["policy", "--rpc", rpc, "--address", contract]
        self.keystore = keystore
        self.capsys = capsys

    async def __call__(self, *args: str, keystore: bool = True) -> tuple[int, str, str]:
        argv = [*self.argv, *(["--keystore", str(self.keystore)] if keystore else []), *args]
        self._pass_through()
        rc = await asyncio.to_thread(main, argv)
        out, err = self.capsys.readouterr()
        with self.capsys.disabled():
            print(f"$ teeproxy {' '.join(args)}: {rc}\n{out}{err}")
        return rc, out, err

    def _pass_through(self) -> None:
        """What the test printed so far goes to the terminal, not into the next command's."""
        out, err = self.capsys.readouterr()
        with self.capsys.disabled():
            sys.stdout.write(out)
            sys.stderr.write(err)

    async def attested_signer(self, r: Replica, pub: Path) -> str:
        """The signing address ``teeproxy verify`` finds in ``r``'s attestation."""
        argv = ["verify", f"https://127.0.0.1:{r.port}", "--sni", "attest.test"]
        self._pass_through()
        rc = await asyncio.to_thread(
            main, [*argv, "--trust-dev-key", str(pub), "--any-measurement", "--json"]
        )
        out, err = self.capsys.readouterr()
        assert rc == 0, err
        return str(json.loads(out)["signing_address"])


async def test_fleet_of_three(
    *,
    tmp_path: Path,
    knot: Knot,
    pebble_factory: PebbleFactory,
    anvil: AnvilFactory,
    etcd_cluster: EtcdCluster,
    launch: Launch,
    llm_backend: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
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
            shared_signing_key=True,
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
        signers = set()
        for r in fleet:
            st = await asyncio.to_thread(r.status)
            assert st["has_key"] is True and st["key_epoch"] == 1, st
            assert st["receipt_signer"]["mode"] == "shared", st  # type: ignore[index]
            signers.add(st["receipt_signer"]["address"])  # type: ignore[index]
        assert len(signers) == 1 and None not in signers, signers
        (first,) = signers
        assert isinstance(first, str)
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

        # 3. A streamed response's receipt, served by r1, fetched from r2 (and the other way
        #    round): both name the fleet's signer, the one r2's evidence attests.
        root = await asyncio.to_thread(pebble_root, pebble)
        ctx = ssl.create_default_context(cadata=root.decode())
        operator = Operator(node.url, contract, tmp_path / "owner.json", capsys)
        build_a = bytes.fromhex(mid[1][2:])
        async with aiohttp.ClientSession() as s:
            request, body, rid = await chat(s, r1, ctx)
            assert b"fleet" in body
            receipt = await fetch_receipt(s, r2, rid, ctx)
            request2, body2, rid2 = await chat(s, r2, ctx)
            receipt2 = await fetch_receipt(s, r1, rid2, ctx)
        assert receipt.model == "m" and "0x" + receipt.signer.hex() == first
        assert "0x" + receipt2.signer.hex() == first
        assert await operator.attested_signer(r2, pub) == first
        for rc_, rq, bd in ((receipt, request, body), (receipt2, request2, body2)):
            verify_receipt(
                rc_, rq, bd, expected_signer=bytes.fromhex(first[2:]), expected_measurement=build_a
            )

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

        def replaced() -> bool:
            got = {r.status()["receipt_signer"]["address"] for r in (r1, r2)}  # type: ignore[index]
            return len(got) == 1 and first not in got

        await wait_until("the fleet's signer replaced on r1 and r2", replaced, 20)
        swapped_after = time.monotonic() - t_revoke
        await asyncio.sleep(2.0)
        stop.set()
        ok, failed = await loader
        print(
            f"rotation {rotated_after:.1f} s and signer swap {swapped_after:.1f} s after the "
            f"revocation; load: {ok} ok, {failed} failed"
        )
        assert failed == 0 and ok > 50
        signer = (await asyncio.to_thread(r1.status))["receipt_signer"]
        assert isinstance(signer, dict)
        new = str(signer["address"])
        assert signer["previous"] == first and signer["epoch"] == 2, signer
        async with aiohttp.ClientSession() as s:
            for a, b in ((r1, r2), (r2, r1)):
                rq, bd, rid = await chat(s, a, ctx)
                later = await fetch_receipt(s, b, rid, ctx)
                assert "0x" + later.signer.hex() == new
                verify_receipt(
                    later, rq, bd, expected_signer=later.signer, expected_measurement=build_a
                )
        assert await operator.attested_signer(r1, pub) == new
        # A receipt signed by the replaced key still verifies off chain: it names its signer.
        verify_receipt(
            receipt,
            request,
            body,
            expected_signer=bytes.fromhex(first[2:]),
            expected_measurement=build_a,
        )
        st3 = await asyncio.to_thread(r3.status)
        assert st3["key_epoch"] == 1, st3
        assert st3["receipt_signer"]["address"] == first, st3  # type: ignore[index]
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
        assert f"shared signer {new} (version 2" in status.stdout, status.stdout
        assert f"replaced {first}" in status.stdout, status.stdout
        metrics = await asyncio.to_thread(admin_text, r1.admin, "/metrics")
        assert "teeproxy_cluster_key_epoch 2.0" in metrics
        assert f'teeproxy_cluster_receipt_signer{{address="{new}"}} 1.0' in metrics
        assert "teeproxy_cluster_receipt_signer_version 2.0" in metrics

        # 4b. The operator registers the fleet's signer from the members' join records: all
        #     or nothing (the revoked r3 is still a member), then once for the shared key.
        owner_key = new_account()
        keystore = tmp_path / "owner.json"
        await asyncio.to_thread(  # scrypt: off the event loop
            lambda: keystore.write_text(
                json.dumps(owner_key.encrypt(PASSWORD, kdf="pbkdf2", iterations=1000))
            )
        )
        monkeypatch.setenv("TEEPROXY_POLICY_PASSWORD", PASSWORD)
        await fund(node.url, owner_key.address)
        await owner_tx(node.url, contract, "transferOwnership", owner_key.address)
        rc, _, err = await operator("accept-ownership")
        assert rc == 0, err
        argv = [
            "register-signer",
            "--cluster-members",
            "--cluster",
            cluster,
            "--sni",
            "attest.test",
        ]
        for endpoint in etcd_cluster.endpoints:
            argv += ["--etcd", endpoint]
        argv += ["--trust-dev-key", str(pub)]
        rc, out, err = await operator(*argv)
        assert rc == 1 and "nothing registered" in err and "  - r3: " in err, err
        rc, out, _ = await operator("signer", new, keystore=False)
        assert rc == 3 and "NOT REGISTERED" in out
        await asyncio.to_thread(r3.proc.send, signal.SIGTERM)
        assert await r3.proc.wait_exit(30) == 0
        rc, out, err = await operator("--dry-run", *argv)
        assert rc == 0, err
        assert json.loads(out)["transaction"]["data"].endswith(new[2:] + mid[1][2:])
        rc, out, err = await operator(*argv)
        assert rc == 0, err
        assert "2 replicas verified: 1 signer(s) to register (shared key)" in out
        assert out.count("sent registerSigner") == 1
        rc, out, _ = await operator("signer", new, keystore=False)
        assert rc == 0 and f"registered for {mid[1]}" in out and "ALLOWED (build A)" in out
        rc, out, err = await operator(*argv)  # again: nothing to send
        assert rc == 0 and "nothing sent" in out, err

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
        for state in (survivor.state, r3.state):  # the fleet's signer now, and the replaced one
            blob = await asyncio.to_thread((signing_dir(state) / SHARED_KEY_FILE).read_bytes)
            scalar = sealer.unseal(blob, SHARED_SEALING_LABEL)
            secrets += [scalar, scalar.hex().encode(), base64.b64encode(scalar)]
        assert any(k.endswith(b"/data/receipt-signer") for k, _ in ours)
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
