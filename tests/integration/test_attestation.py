"""End to end: ``teeproxy serve`` with the simulated provider, ``teeproxy verify`` against it.

Real processes on 127.0.0.1: the proxy (supervisor + worker) prepares an RA-TLS certificate
with a simulated quote, serves it by SNI on its TLS port and answers the nonce endpoint;
``python -m proxy.cli verify`` is the client. A replaying server (the real RA-TLS key and
certificate, but evidence captured earlier) stands for an attacker who cannot get a fresh
quote: the client's nonce is not echoed and verification fails.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from certmgr.attest.ratls_store import load_ratls, ratls_dir
from certmgr.keys import InsecureDevSealer
from tests.helpers.serve import REPO, Launch, Process

pytestmark = pytest.mark.slow

NAME = "attestation.teeproxy.invalid"


def _write_config(tmp: Path, extra: str = "") -> Path:
    cfg = tmp / "teeproxy.toml"
    cfg.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 1\ndrain_grace = 1.0\n'
        '[backend]\nurl = "http://127.0.0.1:9"\n'
        '[admin]\nlisten = ""\n'
        f'[attestation]\nprovider = "simulated"\nserver_name = "{NAME}"\n{extra}'
    )
    return cfg


def _verify(*args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "verify", *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else {}
    except ValueError:
        doc = {}
    return r.returncode, doc, r.stderr


@pytest.fixture
async def served(tmp_path: Path, launch: Launch) -> AsyncIterator[tuple[Process, int, Path]]:
    cfg = await asyncio.to_thread(_write_config, tmp_path)
    p = await launch(["serve", "-c", str(cfg)])
    (m,) = await p.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+)")
    yield p, int(m.group(1)), tmp_path / "state"


async def test_verify_against_simulated_serve(served: tuple[Process, int, Path]) -> None:
    proc, port, state = served
    assert "SIMULATED" in proc.output  # announced loudly
    dev_key = str(ratls_dir(state) / "dev-attestation-key.pub.pem")
    url = f"https://127.0.0.1:{port}"

    # Without trusting the development key: refused.
    rc, doc, _ = await asyncio.to_thread(_verify, url, "--any-measurement")
    assert rc == 1
    assert [f["reason"] for f in doc["failures"]] == ["simulated-untrusted"]

    # Inspect to learn the measurement id, then trust it through an allowlist file.
    rc, doc, err = await asyncio.to_thread(
        _verify, url, "--trust-dev-key", dev_key, "--any-measurement"
    )
    assert rc == 0, err
    mid = doc["measurement_id"]
    allow = state.parent / "allow.txt"
    await asyncio.to_thread(allow.write_text, f"# simulated build\n{mid}\n")
    rc, doc, err = await asyncio.to_thread(
        _verify, url, "--trust-dev-key", dev_key, "--allowlist", str(allow)
    )
    assert rc == 0, (doc, err)
    assert doc["trusted"] and doc["binding"] and doc["tee"] == "tdx"
    assert doc["status"] == "SimulatedTrustedDevKey"
    assert doc["evidence"]["trusted"] and doc["evidence"]["binding"]
    assert doc["evidence"]["claims"]["pubkey-hash"][1] == doc["spki_sha256"]
    assert len(doc["evidence"]["claims"]["nonce"]) == 64
    for reg in ("mr_td", "rt_mr0", "rt_mr1", "rt_mr2", "rt_mr3"):
        assert len(doc[reg]) == 96

    # A measurement that is not allowed: refused with its reason.
    await asyncio.to_thread(allow.write_text, "0x" + "ab" * 32 + "\n")
    rc, doc, _ = await asyncio.to_thread(
        _verify, url, "--trust-dev-key", dev_key, "--allowlist", str(allow)
    )
    assert rc == 1
    assert [f["reason"] for f in doc["failures"]] == ["measurement-not-allowed"]


async def _evidence(port: int, nonce_hex: str) -> bytes:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=NAME)
    writer.write(
        f"GET /.well-known/tee/attestation?nonce={nonce_hex} HTTP/1.1\r\n"
        f"Host: {NAME}\r\nConnection: close\r\n\r\n".encode()
    )
    raw = await reader.read(-1)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def _stolen_context(state: Path) -> ssl.SSLContext:
    from cryptography.hazmat.primitives import serialization

    stored = load_ratls(state, InsecureDevSealer())
    assert stored is not None
    pem, key = stored
    key_file = state.parent / "stolen.key"
    cert_file = state.parent / "stolen.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(pem)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert_file, key_file)
    return sctx


async def test_replayed_evidence_fails_nonce_check(served: tuple[Process, int, Path]) -> None:
    _, port, state = served
    captured = await _evidence(port, "00" * 16)
    # The attacker holds the real RA-TLS key (here: unsealed with the development sealer).
    sctx = await asyncio.to_thread(_stolen_context, state)

    async def replay(request: web.Request) -> web.Response:
        return web.Response(body=captured, content_type="application/json")

    app = web.Application()
    app.router.add_get("/.well-known/tee/attestation", replay)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sctx)
    await site.start()
    try:
        rport = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        dev_key = str(ratls_dir(state) / "dev-attestation-key.pub.pem")
        rc, doc, err = await asyncio.to_thread(
            _verify, f"https://127.0.0.1:{rport}", "--trust-dev-key", dev_key, "--any-measurement"
        )
    finally:
        await runner.cleanup()
    assert rc == 1, err
    assert doc["binding"]  # the certificate itself is genuine ...
    reasons = [f["reason"] for f in doc["evidence"]["failures"]]
    assert reasons == ["nonce"]  # ... but the evidence is not fresh


async def test_nonce_endpoint_errors(served: tuple[Process, int, Path]) -> None:
    _, port, _ = served
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for target, status in [
        ("/.well-known/tee/attestation", b"400"),
        ("/.well-known/tee/attestation?nonce=zz", b"400"),
        ("/.well-known/tee/attestation?nonce=" + "00" * 65, b"400"),
    ]:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname=NAME
        )
        writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read(-1)
        writer.close()
        assert raw.split(b" ", 2)[1] == status, raw[:200]
