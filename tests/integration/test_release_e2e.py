"""End to end: predict a release's measurement, sign its manifest, allow it on chain from the
manifest, and let only a proxy whose (simulated) TEE reports that measurement serve.

Real peers on 127.0.0.1: anvil with the policy contract, ``teeproxy serve`` processes with
the simulated attestation provider (the fake for the TEE device) and governance enforced,
and the real CLI (``proxy.cli.main``) for ``measure predict``, ``release keygen|manifest``,
``policy allow --from-manifest`` and ``verify --manifest``.

The release is the run's shared real build of a git checkout (``release_build``:
``build_image``; its ``build-image --json`` record goes into the manifest). The other build,
which must never serve, only needs another image digest: an OCI layout written by
tests/helpers/release.py (the compose file pins the digest, so it enters the compose hash and
MRCONFIGID, and so the measurement id).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.attest.ratls_store import ratls_dir
from proxy.cli.main import main
from tests.helpers.chain import AnvilFactory, deploy_policy, fund
from tests.helpers.release import ReleaseBuild, compose_for, write_layout
from tests.helpers.serve import Launch

pytestmark = pytest.mark.slow

NAME = "attestation.teeproxy.invalid"


def _config(tmp: Path, tag: str, *, backend: str, rpc: str, contract: str, config_id: str) -> Path:
    """A serve config (blocking: call through asyncio.to_thread)."""
    state = tmp / f"state-{tag}"
    cfg = tmp / f"teeproxy-{tag}.toml"
    cfg.write_text(
        f'state_dir = "{state}"\n'
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ndrain_grace = 1.0\n'
        f'[backend]\nurl = "{backend}"\n[admin]\nlisten = ""\n'
        f'[attestation]\nprovider = "simulated"\nserver_name = "{NAME}"\n'
        f'simulated_mr_config_id = "{config_id}"\n'
        f"[governance]\nmode = 'enforce'\nrpc_urls = ['{rpc}']\ncontract = '{contract}'\n"
        "refresh_period = 0.5\nmax_staleness = 10.0\nrpc_timeout = 2.0\nstartup_wait = 3.0\n"
    )
    return cfg


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


async def _predict(
    capsys: pytest.CaptureFixture[str], tmp: Path, layout: Path, digest: str, tag: str
) -> dict[str, Any]:
    compose = tmp / f"docker-compose-{tag}.yml"
    await asyncio.to_thread(compose.write_text, compose_for(digest))
    rc, out, err = await _cli(
        capsys,
        "measure",
        "predict",
        "simulated",
        "--compose",
        str(compose),
        "--image",
        str(layout),
        "--json",
    )
    assert rc == 0, err
    await asyncio.to_thread((tmp / f"prediction-{tag}.json").write_text, out)
    prediction: dict[str, Any] = json.loads(out)["predictions"][0]
    return prediction


async def test_allow_from_manifest_then_only_that_build_serves(  # noqa: PLR0917 - fixtures
    release_build: ReleaseBuild,
    tmp_path: Path,
    launch: Launch,
    anvil: AnvilFactory,
    aiohttp_server: AiohttpServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def hello(_r: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    backend = f"http://127.0.0.1:{(await aiohttp_server(app)).port}"
    node = await anvil()
    monkeypatch.setenv("TEEPROXY_POLICY_PASSWORD", "operator-password")
    monkeypatch.setenv("TEEPROXY_RELEASE_PASSWORD", "release-password")
    keystore = tmp_path / "owner.json"
    rc, out, _ = await _cli(capsys, "policy", "create-keystore", str(keystore))
    owner = out.split("address ")[1].strip()
    await fund(node.url, owner)
    contract = await deploy_policy(node.url, owner)
    policy = ["policy", "--rpc", node.url, "--address", contract, "--keystore", str(keystore)]

    # The release: the real build (a copy of its layout: the manifest goes next to it), its
    # prediction, a release key, the signed manifest.
    layout = tmp_path / "image-a"
    await asyncio.to_thread(shutil.copytree, release_build.build.output, layout)
    record = release_build.build.to_json()  # what `teeproxy build-image --json` prints
    record["output"] = str(layout)
    build_json = tmp_path / "build.json"
    await asyncio.to_thread(build_json.write_text, json.dumps(record))
    pred = await _predict(capsys, tmp_path, layout, release_build.build.digest, "a")
    commit = release_build.commit
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    rc, _, err = await _cli(capsys, "release", "keygen", str(key), "--public-out", str(pub))
    assert rc == 0, err
    rc, _, err = await _cli(
        capsys,
        *("release", "manifest", "--image", str(layout), "--sign-key", str(key)),
        *("--prediction", str(tmp_path / "prediction-a.json"), "--build-json", str(build_json)),
    )
    assert rc == 0, err
    manifest = layout / "teeproxy-manifest.dsse.json"

    # A manifest with one flipped byte: refused, nothing sent.
    raw = bytearray(await asyncio.to_thread(manifest.read_bytes))
    raw[raw.index(b'"payload": "') + 60] ^= 0x01
    bad = tmp_path / "bad.dsse.json"
    await asyncio.to_thread(bad.write_bytes, bytes(raw))
    rc, out, err = await _cli(
        capsys, *policy, "allow", "--from-manifest", str(bad), "--release-key", str(pub)
    )
    assert rc == 1 and "nothing sent" in err and "sent allow" not in out
    rc, out, _ = await _cli(capsys, "policy", "--rpc", node.url, "--address", contract, "list")
    assert rc == 0 and "no measurement allowed" in out

    # The real manifest: exactly its predicted id allowed, labelled with digest and commit.
    rc, out, err = await _cli(
        capsys, *policy, "allow", "--from-manifest", str(manifest), "--release-key", str(pub)
    )
    assert rc == 0, err
    rc, out, _ = await _cli(capsys, "policy", "--rpc", node.url, "--address", contract, "list")
    digest = pred["inputs"]["image_digest"]
    assert digest == release_build.build.digest
    assert pred["measurement_id"] in out
    assert f"simulated-tdx img:{digest[7:19]} git:{commit[:12]}" in out
    assert out.count("0x") == 2  # the contract address line and one id

    # The build the manifest predicts serves; its verifier names the build.
    config_id = pred["inputs"]["simulated_mr_config_id"]
    cfg_a = await asyncio.to_thread(
        _config,
        tmp_path,
        "a",
        backend=backend,
        rpc=node.url,
        contract=contract,
        config_id=config_id,
    )
    good = await launch(["serve", "-c", str(cfg_a)])
    (m,) = await good.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+)")
    dev_key = ratls_dir(tmp_path / "state-a") / "dev-attestation-key.pub.pem"
    rc, out, err = await _cli(
        capsys,
        *("verify", f"https://127.0.0.1:{m.group(1)}", "--trust-dev-key", str(dev_key)),
        *("--policy-rpc", node.url, "--policy-address", contract),
        *("--manifest", str(manifest), "--release-key", str(pub), "--json"),
    )
    assert rc == 0, err
    report = json.loads(out)
    assert report["trusted"] and report["measurement_id"] == pred["measurement_id"]
    build = report["build"]
    assert build["known"] and build["commit"] == commit and build["image_digest"] == digest
    assert build["target"] == "simulated-tdx"

    # Another build (another image, so another compose hash and MRCONFIGID): never serves.
    other_layout = tmp_path / "image-b"
    other_digest = await asyncio.to_thread(write_layout, other_layout, b"another build")
    other = await _predict(capsys, tmp_path, other_layout, other_digest, "b")
    assert other["measurement_id"] != pred["measurement_id"]
    cfg_b = await asyncio.to_thread(
        _config,
        tmp_path,
        "b",
        backend=backend,
        rpc=node.url,
        contract=contract,
        config_id=other["inputs"]["simulated_mr_config_id"],
    )
    refused = await launch(["serve", "-c", str(cfg_b)])
    assert await refused.wait_exit(30) == 3
    assert "not allowed" in refused.output and "teeproxy serving" not in refused.output
