"""End to end: ``teeproxy policy register-signer https://HOST`` against a real ``teeproxy serve``.

Real processes and peers on 127.0.0.1: the proxy (simulated attestation provider, receipts
on by default) in front of an aiohttp backend that speaks the OpenAI shape, and anvil with
the policy contract. The operator CLI runs through ``proxy.cli.main`` (the installed
command's parser) with an encrypted keystore. It must verify the proxy's attestation first
and register exactly the signing address and measurement id the attestation names; it must
refuse (and register nothing) when the attestation does not verify or the measurement is not
allowed. Finally a receipt the proxy really issued verifies on chain, and stops verifying
once the measurement is revoked. A second test registers two replicas with their own keys in
one call (all or nothing; one transaction per address; nothing sent again).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.attest.ratls_store import ratls_dir
from certmgr.policy.artifacts import ABI
from certmgr.receipts.format import Receipt
from certmgr.receipts.verify import verify_receipt
from proxy.cli.main import main
from tests.helpers.chain import AnvilFactory, deploy_policy, fund, web3_for
from tests.helpers.serve import Launch

pytestmark = pytest.mark.slow

PASSWORD = "operator-password"
NAME = "attestation.teeproxy.invalid"
COMPLETION = {
    "id": "chatcmpl-onchain",
    "object": "chat.completion",
    "model": "llama-test",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
}


async def _completion(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response(COMPLETION)


def _write_config(tmp: Path, backend: str) -> Path:
    cfg = tmp / "teeproxy.toml"
    cfg.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ndrain_grace = 1.0\n'
        f'[backend]\nurl = "{backend}"\n'
        '[admin]\nlisten = ""\n'
        f'[attestation]\nprovider = "simulated"\nserver_name = "{NAME}"\n'
    )
    return cfg


@dataclass
class Setup:
    port: int
    dev_key: str
    rpc: str
    contract: str
    owner_keystore: Path
    capsys: pytest.CaptureFixture[str]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def policy(self, *args: str, keystore: bool = True) -> tuple[int, str, str]:
        argv = ["policy", "--rpc", self.rpc, "--address", self.contract]
        if keystore:
            argv += ["--keystore", str(self.owner_keystore)]
        rc = await asyncio.to_thread(main, [*argv, *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    async def attested(self) -> tuple[str, str]:
        """(measurement id, signing address) as ``teeproxy verify`` reports them."""
        rc = await asyncio.to_thread(
            main,
            ["verify", self.url, "--trust-dev-key", self.dev_key, "--any-measurement", "--json"],
        )
        out, err = self.capsys.readouterr()
        assert rc == 0, err
        doc = json.loads(out)
        return str(doc["measurement_id"]), str(doc["signing_address"])

    async def signer_of(self, address: str) -> bytes:
        w3 = web3_for(self.rpc)
        try:
            c = w3.eth.contract(address=self.contract, abi=ABI)
            return bytes(
                await c.functions.signerMeasurement(w3.to_checksum_address(address)).call()
            )
        finally:
            await w3.provider.disconnect()  # type: ignore[attr-defined]


@pytest.fixture
async def setup(  # noqa: PLR0917 - pytest injects fixtures by name
    tmp_path: Path,
    launch: Launch,
    anvil: AnvilFactory,
    aiohttp_server: AiohttpServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Setup]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completion)
    backend = await aiohttp_server(app)
    cfg = await asyncio.to_thread(_write_config, tmp_path, f"http://127.0.0.1:{backend.port}")
    proc = await launch(["serve", "-c", str(cfg)])
    node = await anvil()
    monkeypatch.setenv("TEEPROXY_POLICY_PASSWORD", PASSWORD)
    keystore = tmp_path / "owner.json"
    rc = await asyncio.to_thread(main, ["policy", "create-keystore", str(keystore)])
    out = capsys.readouterr().out
    assert rc == 0, out
    owner = out.split("address ")[1].strip()
    await fund(node.url, owner)
    contract = await deploy_policy(node.url, owner)
    (m,) = await proc.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+)")
    dev_key = str(ratls_dir(tmp_path / "state") / "dev-attestation-key.pub.pem")
    yield Setup(int(m.group(1)), dev_key, node.url, contract, keystore, capsys)


async def _post_completion(port: int) -> tuple[bytes, bytes, str]:
    """One chat completion through the proxy: (request body, response body, receipt header)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the receipt is what is checked here, not the WebPKI
    body = json.dumps({"model": "llama-test", "messages": [{"role": "user", "content": "x"}]})
    async with (
        aiohttp.ClientSession(auto_decompress=False) as s,
        s.post(
            f"https://127.0.0.1:{port}/v1/chat/completions",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
            ssl=ctx,
        ) as r,
    ):
        assert r.status == 200
        data = await r.read()
        return body.encode(), data, r.headers["Teeproxy-Receipt"]


async def _verify_on_chain(rpc: str, contract: str, r: Receipt) -> tuple[bool, str]:
    w3 = web3_for(rpc)
    try:
        c = w3.eth.contract(address=contract, abi=ABI)
        fields = (
            r.request_sha256,
            r.response_sha256,
            r.model,
            r.response_id,
            r.timestamp,
            r.measurement_id,
        )
        valid, signer = await c.functions.verifyReceipt(*fields, r.signature).call()
        return bool(valid), str(signer).lower()
    finally:
        await w3.provider.disconnect()  # type: ignore[attr-defined]


async def test_register_signer_end_to_end(setup: Setup) -> None:
    s = setup
    mid, address = await s.attested()
    assert address.startswith("0x") and len(address) == 42

    # 1. The measurement is not allowed yet: the attestation is judged by this contract and
    #    refused, with the command that would allow it; nothing is registered.
    rc, _, err = await s.policy("register-signer", s.url, "--trust-dev-key", s.dev_key)
    assert rc == 1
    assert "NOT TRUSTED" in err and "measurement-not-allowed" in err, err
    assert f"teeproxy policy allow {mid}" in err
    # ...and with the measurement check waived on the client, the contract state still decides.
    rc, _, err = await s.policy(
        "register-signer", s.url, "--trust-dev-key", s.dev_key, "--any-measurement"
    )
    assert rc == 1 and f"measurement {mid} is not allowed" in err, err
    assert await s.signer_of(address) == bytes(32)

    rc, out, err = await s.policy("allow", mid, "--label", "simulated build")
    assert rc == 0, err

    # 2. An attestation that does not verify: the simulated quote without its key trusted,
    #    and a port where no proxy listens. Refused before any password or transaction.
    rc, _, err = await s.policy("register-signer", s.url)
    assert rc == 1 and "NOT TRUSTED" in err and "simulated-untrusted" in err, err
    rc, _, err = await s.policy(
        "register-signer", "https://127.0.0.1:9", "--trust-dev-key", s.dev_key
    )
    assert rc == 1 and "cannot verify the attestation of https://127.0.0.1:9" in err, err
    assert await s.signer_of(address) == bytes(32)

    # 3. A dry run prints the unsigned registerSigner transaction for the attested values.
    rc, out, err = await s.policy(
        "--dry-run", "register-signer", s.url, "--trust-dev-key", s.dev_key
    )
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["function"] == "registerSigner"
    assert doc["transaction"]["data"].endswith(address[2:] + mid[2:])  # (address, bytes32)
    assert "TRUSTED" in err and address in err.lower()
    assert await s.signer_of(address) == bytes(32)

    # 4. Registered: exactly the attested address, for exactly the attested measurement.
    rc, out, err = await s.policy("register-signer", s.url, "--trust-dev-key", s.dev_key)
    assert rc == 0, err
    assert "attested" in out and "SIMULATED" in out
    assert f"measurement: {mid}" in out and "version:     2" in out
    assert await s.signer_of(address) == bytes.fromhex(mid[2:])
    rc, out, _ = await s.policy("signer", address, keystore=False)
    assert rc == 0 and f"registered for {mid}" in out and "ALLOWED (simulated build)" in out

    # 5. A receipt the proxy issued verifies off chain (attested signer) and on chain.
    request, response, header = await _post_completion(s.port)
    receipt = Receipt.from_header(header)
    verify_receipt(
        receipt,
        request,
        response,
        expected_signer=bytes.fromhex(address[2:]),
        expected_measurement=bytes.fromhex(mid[2:]),
    )
    assert await _verify_on_chain(s.rpc, s.contract, receipt) == (True, address)

    # 6. Revoked: the receipt no longer verifies on chain; `signer` says why (exit 3).
    rc, _, err = await s.policy("revoke", mid)
    assert rc == 0, err
    assert await _verify_on_chain(s.rpc, s.contract, receipt) == (False, address)
    rc, out, _ = await s.policy("signer", address, keystore=False)
    assert rc == 3 and "NOT ALLOWED" in out

    # 7. Unregister (owner or guardian); a second time is a decoded custom error.
    rc, out, err = await s.policy("unregister-signer", address)
    assert rc == 0, err
    assert await s.signer_of(address) == bytes(32)
    rc, _, err = await s.policy("unregister-signer", address)
    assert rc == 1 and "SignerNotRegistered(" in err, err
    rc, out, _ = await s.policy("signer", address, keystore=False)
    assert rc == 3 and "NOT REGISTERED" in out
    rc, _, err = await s.policy("unregister-signer", "0x1234")
    assert rc == 1 and "not an address" in err


async def test_register_signer_for_two_replicas_with_their_own_keys(
    setup: Setup,
    tmp_path: Path,
    launch: Launch,
    aiohttp_server: AiohttpServer,
) -> None:
    """Per-replica keys, several URLs in one call: each replica verified, one registerSigner
    per distinct address, all or nothing, nothing sent again for what is in place."""
    s = setup
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _completion)
    backend = await aiohttp_server(app)
    second = tmp_path / "second"
    await asyncio.to_thread(second.mkdir)
    cfg = await asyncio.to_thread(_write_config, second, f"http://127.0.0.1:{backend.port}")
    proc = await launch(["serve", "-c", str(cfg)])
    (m,) = await proc.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+)")
    other = Setup(
        int(m.group(1)),
        str(ratls_dir(second / "state") / "dev-attestation-key.pub.pem"),
        s.rpc,
        s.contract,
        s.owner_keystore,
        s.capsys,
    )
    mid, address = await s.attested()
    mid2, address2 = await other.attested()
    assert mid2 == mid and address2 != address  # one build, two replicas, two keys
    rc, _, err = await s.policy("allow", mid, "--label", "simulated build")
    assert rc == 0, err
    trust = ("--trust-dev-key", s.dev_key, "--trust-dev-key", other.dev_key)

    # One replica that cannot be verified: nothing is registered for the other either.
    rc, _, err = await s.policy("register-signer", s.url, "https://127.0.0.1:9", *trust)
    assert rc == 1 and "https://127.0.0.1:9" in err and "nothing registered" in err, err
    assert await s.signer_of(address) == bytes(32)

    # Both verified: one transaction each, each address for the attested measurement.
    rc, out, err = await s.policy("register-signer", s.url, other.url, *trust)
    assert rc == 0, err
    assert "2 replicas verified: 2 signer(s) to register" in out
    assert out.count("sent registerSigner") == 2, out
    assert await s.signer_of(address) == bytes.fromhex(mid[2:])
    assert await s.signer_of(address2) == bytes.fromhex(mid[2:])

    # Again: both in place, nothing sent.
    rc, out, err = await s.policy("register-signer", s.url, other.url, *trust)
    assert rc == 0 and "nothing sent" in out and "sent registerSigner" not in out, (out, err)
