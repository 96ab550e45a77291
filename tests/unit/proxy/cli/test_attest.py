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


# -- verify-quote / measure on Nitro documents and dstack evidence -------------------------------


def _run_json(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    from proxy.cli.main import main

    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_verify_quote_nitro_documents_at_pinned_times(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers.nitro import DSTACK_ATTEST, NITRO_DATA, NSM_QVL

    for vec in (NSM_QVL, DSTACK_ATTEST):
        at = str(vec[2] // 1000 + 1)
        for name in vec[:2]:  # the raw COSE_Sign1 and the SCALE-wrapped dstack attestation
            path = str(NITRO_DATA / name)
            code, doc = _run_json(["verify-quote", path, "--at", at, "--any-measurement"], capsys)
            assert code == 0, doc["failures"]
            assert (doc["tee"], doc["status"], doc["trusted"]) == ("nitro", "Verified", True)
            assert str(doc["pcr1"]).startswith("0343b056")
        code, doc = _run_json(
            [
                "verify-quote",
                str(NITRO_DATA / vec[0]),
                "--at",
                str(int(at) + 86400),
                "--any-measurement",
            ],
            capsys,
        )
        assert code == 1
        assert {f["reason"] for f in doc["failures"]} == {"collateral-expired"}  # type: ignore[attr-defined]
    code, doc = _run_json(
        [
            "verify-quote",
            str(NITRO_DATA / NSM_QVL[0]),
            "--at",
            str(NSM_QVL[2] // 1000 + 600),
            "--nitro-max-age",
            "300",
            "--any-measurement",
        ],
        capsys,
    )
    assert code == 1 and [f["reason"] for f in doc["failures"]] == ["nitro-timestamp"]  # type: ignore[attr-defined]


def test_verify_quote_dstack_get_quote_answer(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers.nitro import DSTACK_DATA

    path = str(DSTACK_DATA / "tdx-lite-getquote.json")
    key = "039e695a6b5e24824e8fcfe923bfa9cde0f1cb51b6ab5f060eff3c1cd45d057910"
    code, doc = _run_json(["verify-quote", path, "--expect-key", key, "--any-measurement"], capsys)
    assert code == 1  # no collateral: never trusted
    assert [f["reason"] for f in doc["failures"]] == ["collateral-missing"]  # type: ignore[attr-defined]
    assert doc["report_data_key"]["public_key"] == key  # type: ignore[index]
    assert doc["dstack"]["rtmr3_replayed"] == doc["rt_mr3"]  # type: ignore[index]
    assert doc["dstack"]["os_image_hash"].startswith("e6f5cfec")  # type: ignore[index]
    code, doc = _run_json(
        ["verify-quote", path, "--expect-key", "02" * 33, "--any-measurement"], capsys
    )
    assert "report-data" in [f["reason"] for f in doc["failures"]]  # type: ignore[attr-defined]


def test_measure_nitro_and_dstack(capsys: pytest.CaptureFixture[str]) -> None:
    from certmgr.attest.measurement import measurement_id
    from certmgr.attest.quote import parse_evidence
    from proxy.cli.main import main
    from tests.helpers.nitro import NITRO_DATA, NSM_QVL

    assert main(["measure", str(NITRO_DATA / NSM_QVL[1]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = measurement_id(parse_evidence((NITRO_DATA / NSM_QVL[0]).read_bytes()).measurement)
    assert doc["tee"] == "nitro" and doc["measurement_id"] == "0x" + expected.hex()


def test_verify_a_dstack_app_through_its_ratls_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``teeproxy verify https://APP`` on a dstack app (a loopback TLS server presenting a
    dstack-format certificate, SIMULATED quote): the certificate is verified and the app
    reported; no teeproxy evidence endpoint is asked for (``--require-nonce`` fails)."""
    import socket
    import ssl
    import threading

    from cryptography.hazmat.primitives import serialization

    from proxy.cli.main import main
    from tests.helpers.attest import DEV_KEY
    from tests.helpers.nitro import dstack_app_certificate

    cert_pem, key_pem = dstack_app_certificate(DEV_KEY, "app.dstack.test")
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key_pem)
    dev = tmp_path / "dev.pem"
    dev.write_bytes(
        DEV_KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(2)
                    try:
                        data = tls.recv(4096)
                    except (TimeoutError, ssl.SSLError, OSError):
                        data = b""
                    requests.append(data)
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    base = ["verify", url, "--sni", "app.dstack.test", "--trust-dev-key", str(dev)]
    base += ["--any-measurement", "--json", "--timeout", "5"]
    try:
        code = main(base)
        doc = json.loads(capsys.readouterr().out)
        strict = main([*base, "--require-nonce"])
        strict_doc = json.loads(capsys.readouterr().out)
    finally:
        t.join(timeout=10)
        listener.close()
    assert code == 0, doc["failures"]
    assert doc["format"] == "dstack" and doc["binding_rule"] == "dstack-sha512"
    assert doc["evidence"] is None and "dstack app" in doc["evidence_skipped"]
    assert doc["dstack"]["compose_hash"] == bytes(range(32)).hex()
    assert doc["dstack"]["app_id"] == bytes(range(20)).hex()
    assert requests == [b"", b""]  # nothing was sent to the app
    assert strict == 1 and [f["reason"] for f in strict_doc["failures"]] == ["nonce"]


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
