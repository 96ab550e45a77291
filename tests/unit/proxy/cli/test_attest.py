"""proxy.cli.attest: ``teeproxy verify`` (the client) against a worker on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

from certmgr.attest.providers.nvml import NvmlGpuSource
from certmgr.attest.ratls_store import ratls_dir
from certmgr.keys import InsecureDevSealer
from proxy.dataplane.attestation import make_endpoint
from proxy.dataplane.worker import Worker
from proxy.runtime import build_runtime
from tests.helpers.nvidia import FakeNvml, real_h100_gpu
from tests.helpers.simulated_tee import RATLS_NAME, prepare_simulated


async def test_verify_cli_refuses_certificate_and_evidence_naming_different_signers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``teeproxy verify`` (the client) against a worker whose evidence names another
    address than its certificate: refused with its own reason."""
    from proxy.cli.main import main

    state = tmp_path / "state"
    cfg, store = await asyncio.to_thread(prepare_simulated, state)
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    dev_key = str(ratls_dir(state) / "dev-attestation-key.pub.pem")
    args = ["verify", f"https://127.0.0.1:{w.ports[0]}", "--sni", RATLS_NAME]
    args += ["--trust-dev-key", dev_key, "--any-measurement", "--json"]
    try:
        good = await asyncio.to_thread(main, args)
        good_doc = json.loads(capsys.readouterr().out)
        w.attestation.signing_address = "0x" + "cd" * 20
        bad = await asyncio.to_thread(main, args)
        bad_doc = json.loads(capsys.readouterr().out)
    finally:
        await w.drain(grace=1.0)
    assert (good, bad) == (0, 1)
    assert good_doc["signing_address"] == good_doc["evidence"]["signing_address"]
    assert good_doc["signing_address"] is not None
    reasons = [f["reason"] for f in bad_doc["evidence"]["failures"]]
    assert reasons == ["signing-address-mismatch"]
    assert bad_doc["trusted"] is False


async def test_verify_cli_with_gpus_reports_them_and_require_gpu_decides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker whose fake NVML replays the real H100 report: ``teeproxy verify`` reports
    the GPU (not decisive), ``--require-gpu`` refuses it for its nonce."""
    from proxy.cli.main import main

    state = tmp_path / "state"
    cfg, store = await asyncio.to_thread(prepare_simulated, state)
    w = Worker(cfg, store, reuse_port=False)
    runtime = await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer())
    fake = await asyncio.to_thread(lambda: FakeNvml([real_h100_gpu()]))
    w.attestation = make_endpoint(
        cfg, w.holder, dataclasses.replace(runtime, gpus=NvmlGpuSource(fake))
    )
    await w.start()
    dev_key = str(ratls_dir(state) / "dev-attestation-key.pub.pem")
    args = ["verify", f"https://127.0.0.1:{w.ports[0]}", "--sni", RATLS_NAME]
    args += ["--trust-dev-key", dev_key, "--any-measurement", "--json"]
    try:
        reported = await asyncio.to_thread(main, args)
        reported_doc = json.loads(capsys.readouterr().out)
        required = await asyncio.to_thread(main, [*args, "--require-gpu"])
        required_doc = json.loads(capsys.readouterr().out)
    finally:
        await w.drain(grace=1.0)
    ev = reported_doc["evidence"]
    assert reported == 0 and ev["trusted"] is True
    assert ev["gpu_mode"] == "cc" and ev["gpu_count"] == 1
    assert [g["arch"] for g in ev["gpus"]] == ["HOPPER"]
    assert {f["reason"] for f in ev["gpu_failures"]} == {"gpu-nonce"}
    assert required == 1 and required_doc["trusted"] is False
    assert {f["reason"] for f in required_doc["evidence"]["failures"]} == {"gpu-nonce"}
