"""proxy.dataplane.attestation: the nonce endpoint ``/.well-known/tee/attestation``
in a worker on loopback.

The simulated provider (the only TEE-less one that exists here) stands for the TEE: the
RA-TLS certificate is served by SNI next to the ordinary one, and the evidence binds the
certificate of the connection it was asked on.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import os
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from certmgr.attest.nvidia import gpu_nonce
from certmgr.attest.nvidia_verify import GpuCollateral
from certmgr.attest.providers.nvml import NvmlGpuSource
from certmgr.attest.ratls import parse_certificate, report_data_for_claims
from certmgr.attest.snp_verify import SnpPolicy
from certmgr.attest.verify import Reason, VerifyOptions, verify_certificate, verify_evidence
from certmgr.keys import InsecureDevSealer
from proxy.dataplane.attestation import make_endpoint
from proxy.dataplane.worker import Worker
from proxy.runtime import build_runtime
from tests.helpers.nvidia import (
    T_H100,
    T_OWN,
    FakeNvml,
    h100_report,
    own_device,
    own_gpu,
    real_h100_gpu,
)
from tests.helpers.simulated_tee import RATLS_NAME, dev_verify_options, prepare_simulated
from tests.helpers.snp import dstack_cert_table, dstack_report
from tests.helpers.tsm import FakeTsm


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    cfg, store = await asyncio.to_thread(
        prepare_simulated, tmp_path / "state", "quote_rate = 0.01\nquote_burst = 3\n"
    )
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    yield w
    await w.drain(grace=1.0)


def _client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _get(port: int, sni: str, target: str, method: str = "GET") -> tuple[int, bytes, bytes]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=_client(), server_hostname=sni
    )
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True)
    request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
    writer.write((request + "Connection: close\r\n\r\n").encode())
    raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, der


async def test_ratls_by_sni_and_evidence_binds_connection(worker: Worker) -> None:
    port = worker.ports[0]
    state = Path(worker.cfg.state_dir)
    opts = await asyncio.to_thread(dev_verify_options, state)
    nonce = "ab" * 16
    # Asked by the attestation name: the RA-TLS certificate, and evidence naming its key.
    status, body, der = await _get(port, RATLS_NAME, f"/.well-known/tee/attestation?nonce={nonce}")
    assert status == 200
    v = verify_certificate(der, None, opts)
    assert v.trusted, v.failures
    spki_hash = parse_certificate(der).spki_sha256
    ev = verify_evidence(body, bytes.fromhex(nonce), spki_hash, None, opts)
    assert ev.trusted, ev.failures
    doc = json.loads(body)
    assert {"version", "tee", "provider", "quote", "claims", "claims_view", "gpu"} <= set(doc)
    assert doc["tee"] == "tdx" and doc["provider"] == "simulated"

    # Asked by another name: the development certificate, and evidence naming *its* key.
    status, body2, der2 = await _get(
        port, "localhost", f"/.well-known/tee/attestation?nonce={nonce}"
    )
    assert status == 200
    assert der2 != der
    with pytest.raises(Exception):  # noqa: B017 - not an RA-TLS certificate at all
        parse_certificate(der2)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    dev_spki = (
        x509.load_der_x509_certificate(der2)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    dev_hash = hashlib.sha256(dev_spki).digest()
    assert verify_evidence(body2, bytes.fromhex(nonce), dev_hash, None, opts).trusted
    # Evidence asked on the development-certificate connection does not vouch for RA-TLS.
    assert verify_evidence(body2, bytes.fromhex(nonce), spki_hash, None, opts).reasons == (
        Reason.SPKI,
    )


async def test_rate_limit_and_errors(worker: Worker) -> None:
    port = worker.ports[0]
    path = "/.well-known/tee/attestation?nonce=" + "01" * 8
    statuses = [(await _get(port, RATLS_NAME, path))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # burst 3, then (at 0.01/s) no token
    assert (await _get(port, RATLS_NAME, "/.well-known/tee/attestation?nonce=0102"))[0] == 400
    assert (await _get(port, RATLS_NAME, path, method="POST"))[0] == 405


async def test_no_provider_answers_503(tmp_path: Path) -> None:
    cfg, store = await asyncio.to_thread(prepare_simulated, tmp_path / "state")
    w = Worker(cfg, store, reuse_port=False)
    none_cfg = cfg.replace(attestation=cfg.attestation.__class__(provider="none"))
    w.attestation = make_endpoint(
        none_cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, none_cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    try:
        status, body, _ = await _get(
            w.ports[0], RATLS_NAME, "/.well-known/tee/attestation?nonce=" + "01" * 8
        )
    finally:
        await w.drain(grace=1.0)
    assert status == 503 and b"attestation_unavailable" in body


async def test_evidence_attests_acme_account_and_keys(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    import proxy.dataplane.attestation
    from proxy.config import AcmeConfig

    doc = {
        "account_uri": "https://ca.test/acct/7",
        "certificate_keys": [{"spki_sha256": "11" * 32}, {"spki_sha256": "22" * 32}],
        "format": "teeproxy-acme-evidence/1",
    }
    monkeypatch.setattr(
        proxy.dataplane.attestation, "read_evidence", lambda _s: json.dumps(doc).encode()
    )
    endpoint = worker.attestation
    endpoint.cfg = endpoint.cfg.replace(acme=AcmeConfig(enabled=True))
    status, body, der = await _get(
        worker.ports[0], RATLS_NAME, "/.well-known/tee/attestation?nonce=" + "05" * 8
    )
    assert status == 200
    opts = await asyncio.to_thread(dev_verify_options, Path(worker.cfg.state_dir))
    v = verify_evidence(body, b"\x05" * 8, parse_certificate(der).spki_sha256, None, opts)
    assert v.trusted, v.failures
    claims = v.to_json()["claims"]
    assert claims["acme-account"] == "https://ca.test/acct/7"
    assert claims["acme-keys"] == [[1, "11" * 32], [1, "22" * 32]]


async def test_evidence_names_the_signing_address(tmp_path: Path) -> None:
    from certmgr.receipts.signing import load_signing_key

    state = tmp_path / "state"
    cfg, store = await asyncio.to_thread(prepare_simulated, state)
    sealer = InsecureDevSealer()
    address = (await asyncio.to_thread(load_signing_key, state, sealer)).address
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg, w.holder, await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=sealer)
    )
    await w.start()
    try:
        nonce = "0a" * 16
        status, body, der = await _get(
            w.ports[0], RATLS_NAME, f"/.well-known/tee/attestation?nonce={nonce}"
        )
    finally:
        await w.drain(grace=1.0)
    assert status == 200
    opts = await asyncio.to_thread(dev_verify_options, state)
    ev = verify_evidence(body, bytes.fromhex(nonce), parse_certificate(der).spki_sha256, None, opts)
    assert ev.trusted, ev.failures
    assert ev.signing_address == address
    assert json.loads(body)["claims_view"]["signing-address"] == "0x" + address.hex()


async def test_snp_evidence_carries_the_certificate_table(tmp_path: Path) -> None:
    """A worker on an SEV-SNP guest (fake configfs-tsm ``sev_guest``: the real dstack report
    and its real, page-padded certificate table): the evidence's ``endorsements`` carry the
    table and a client verifies the report with it, offline. The report cannot be made over
    this nonce, so the binding fails (report-data), and only the binding."""

    report, table = await asyncio.to_thread(lambda: (dstack_report(), dstack_cert_table()))

    def respond(rd: bytes) -> tuple[bytes, bytes]:
        return report, table.ljust(16384, b"\x00")

    tsm = await asyncio.to_thread(FakeTsm, tmp_path / "tsm", "sev_guest", respond)
    await asyncio.to_thread(tsm.add_pid, os.getpid())
    extra = f'provider = "configfs-tsm"\nconfigfs_tsm_dir = "{tsm.root}"\n'
    cfg, store = await asyncio.to_thread(prepare_simulated, tmp_path / "state", extra)
    w = Worker(cfg, store, reuse_port=False)
    w.attestation = make_endpoint(
        cfg,
        w.holder,
        await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer()),
    )
    await w.start()
    nonce = bytes.fromhex("cd" * 16)
    try:
        status, body, der = await _get(
            w.ports[0], RATLS_NAME, f"/.well-known/tee/attestation?nonce={nonce.hex()}"
        )
    finally:
        await w.drain(grace=1.0)
        await asyncio.to_thread(tsm.close)
    assert status == 200
    doc = json.loads(body)
    assert doc["tee"] == "sev-snp" and doc["provider"] == "configfs-tsm"
    assert doc["endorsements"]["format"] == "sev-snp-cert-table"
    assert base64.b64decode(doc["endorsements"]["data"]) == table  # compacted
    # The TEE was asked for a report over exactly these claims (nonce included).
    claims = base64.b64decode(doc["claims"])
    assert tsm.requests[-1] == report_data_for_claims(claims)
    assert doc["claims_view"]["nonce"] == nonce.hex()
    opts = VerifyOptions(any_measurement=True, snp=SnpPolicy(allow_smt=True))
    ev = verify_evidence(body, nonce, parse_certificate(der).spki_sha256, None, opts)
    assert ev.status == "UpToDate" and ev.reasons == (Reason.REPORT_DATA,)
    assert ev.to_json()["collateral_source"] == "evidence"


# -- NVIDIA GPUs through a fake of NVML ----------------------------------------------------


async def _gpu_worker(tmp_path: Path, fake: FakeNvml, *, enforce: bool = False) -> Worker:
    cfg, store = await asyncio.to_thread(
        prepare_simulated, tmp_path / "state", "quote_rate = 0.01\nquote_burst = 3\n"
    )
    if enforce:  # prepared in monitor mode: the supervisor would refuse enforce here
        cfg = cfg.replace(attestation=dataclasses.replace(cfg.attestation, gpu="enforce"))
    w = Worker(cfg, store, reuse_port=False)
    runtime = await asyncio.to_thread(build_runtime, cfg, prepare=False, sealer=InsecureDevSealer())
    w.attestation = make_endpoint(
        cfg, w.holder, dataclasses.replace(runtime, gpus=NvmlGpuSource(fake))
    )
    await w.start()
    return w


async def _evidence_of(w: Worker, nonce: str) -> tuple[int, bytes, bytes]:
    return await _get(w.ports[0], RATLS_NAME, f"/.well-known/tee/attestation?nonce={nonce}")


async def test_gpu_evidence_is_served_and_bound_to_the_same_claims(tmp_path: Path) -> None:
    dev = await asyncio.to_thread(own_device)
    fake = FakeNvml([own_gpu(dev), own_gpu(dev)])
    w = await _gpu_worker(tmp_path, fake)
    try:
        status, body, der = await _evidence_of(w, "cd" * 16)
        assert status == 200
        doc = json.loads(body)
        opts = await asyncio.to_thread(dev_verify_options, Path(w.cfg.state_dir))
    finally:
        await w.drain(grace=1.0)
    assert [g["arch"] for g in doc["gpu"]] == ["HOPPER", "HOPPER"]
    assert doc["claims_view"]["gpu-mode"] == "cc" and doc["claims_view"]["gpu-count"] == 2
    claims = base64.b64decode(doc["claims"])
    assert fake.nonces == [gpu_nonce(claims)] * 2  # the nonce NVML was given
    spki_hash = parse_certificate(der).spki_sha256
    required = dataclasses.replace(opts, require_gpu=True)
    coll = GpuCollateral(device_root=dev.root.cert)
    v = verify_evidence(
        body, bytes.fromhex("cd" * 16), spki_hash, None, required, now=T_OWN, gpu_collateral=coll
    )
    assert v.trusted, v.failures
    assert [g.trusted for g in v.gpus] == [True, True]


async def test_real_gpu_bytes_replayed_are_refused_by_their_nonce(tmp_path: Path) -> None:
    # The fake answers with the real H100 report whatever the nonce (a replay): everything
    # about it verifies except that it is not over this evidence's claims.
    fake = await asyncio.to_thread(lambda: FakeNvml([real_h100_gpu()]))
    w = await _gpu_worker(tmp_path, fake)
    try:
        status, body, der = await _evidence_of(w, "ef" * 16)
        opts = await asyncio.to_thread(dev_verify_options, Path(w.cfg.state_dir))
    finally:
        await w.drain(grace=1.0)
    assert status == 200
    real = await asyncio.to_thread(h100_report)
    assert base64.b64decode(json.loads(body)["gpu"][0]["evidence"]) == real
    required = dataclasses.replace(opts, require_gpu=True)
    v = verify_evidence(
        body, bytes.fromhex("ef" * 16), parse_certificate(der).spki_sha256, None, required,
        now=T_H100,
    )  # fmt: skip
    assert set(v.reasons) == {Reason.GPU_NONCE}
    assert any("another nonce than the one expected" in f.message for f in v.failures)


async def test_enforce_refuses_gpus_in_devtools_mode(tmp_path: Path) -> None:
    fake = await asyncio.to_thread(lambda: FakeNvml([real_h100_gpu()], devtools=1))
    w = await _gpu_worker(tmp_path, fake, enforce=True)
    try:
        status, body, _ = await _evidence_of(w, "01" * 16)
    finally:
        await w.drain(grace=1.0)
    assert status == 503 and b"gpu_attestation_failed" in body


async def test_monitor_reports_devtools_mode_and_a_verifier_refuses_it(tmp_path: Path) -> None:
    fake = await asyncio.to_thread(lambda: FakeNvml([real_h100_gpu()], devtools=1))
    w = await _gpu_worker(tmp_path, fake)
    try:
        status, body, der = await _evidence_of(w, "02" * 16)
        opts = await asyncio.to_thread(dev_verify_options, Path(w.cfg.state_dir))
    finally:
        await w.drain(grace=1.0)
    assert status == 200 and json.loads(body)["claims_view"]["gpu-mode"] == "devtools"
    required = dataclasses.replace(opts, require_gpu=True)
    v = verify_evidence(
        body, bytes.fromhex("02" * 16), parse_certificate(der).spki_sha256, None, required,
        now=T_H100,
    )  # fmt: skip
    assert Reason.GPU_MODE in v.reasons


async def test_gpu_work_is_rate_limited_with_the_quotes(tmp_path: Path) -> None:
    fake = await asyncio.to_thread(lambda: FakeNvml([real_h100_gpu()]))
    w = await _gpu_worker(tmp_path, fake)
    try:
        statuses = [(await _evidence_of(w, "03" * 16))[0] for _ in range(4)]
    finally:
        await w.drain(grace=1.0)
    assert statuses == [200, 200, 200, 429]  # one token per answer, GPU work included


async def test_gpu_evidence_failure_in_monitor_serves_an_empty_list(tmp_path: Path) -> None:
    fake = await asyncio.to_thread(lambda: FakeNvml([real_h100_gpu()], fail="report"))
    w = await _gpu_worker(tmp_path, fake)
    try:
        status, body, _ = await _evidence_of(w, "04" * 16)
    finally:
        await w.drain(grace=1.0)
    doc = json.loads(body)
    assert status == 200 and doc["gpu"] == [] and doc["claims_view"]["gpu-count"] == 1
