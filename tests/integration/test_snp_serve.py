"""End to end on "SEV-SNP": ``teeproxy serve`` over a fake configfs-tsm ``sev_guest`` tree,
``teeproxy verify`` and a client of the nonce endpoint against it.

There is no SNP device here. The fake tree (:class:`tests.helpers.tsm.FakeTsm`) speaks the
kernel's interface to the real processes (supervisor and workers: an entry per process,
``inblob``/``outblob``/``auxblob``/``generation``) and answers every request with the real
dstack report (Milan, v3) and its real certificate table (dstack's VCEK and ASK, AMD's
Milan ARK), page-padded as the kernel hands it out. A report signed over *our* report_data
cannot be made without the chip, so what this test shows, honestly, is:

- structure: the report travels in the certificate under tag 0x1a7504 and in the evidence;
- transport: the certificate table travels in the certificate's endorsements extension and
  in the evidence's ``endorsements``, and the client verifies the report's signature and
  its chain to AMD's root with it (status ``UpToDate``), with no KDS;
- binding: it fails, ``report-data`` and nothing else, so the verdict is never trusted.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from certmgr.attest.cmw import CMW_OID, TsmReport
from certmgr.attest.cmw import decode_extension as decode_cmw
from certmgr.attest.endorsements import ENDORSEMENTS_OID
from certmgr.attest.ratls import parse_certificate, report_data_for_claims
from certmgr.attest.snp_verify import SnpPolicy
from certmgr.attest.verify import Reason, VerifyOptions, verify_evidence
from tests.helpers.serve import REPO, Launch, Process
from tests.helpers.snp import dstack_cert_table, dstack_report
from tests.helpers.tsm import FakeTsm

pytestmark = pytest.mark.slow

NAME = "attestation.teeproxy.invalid"


def _write_config(tmp: Path, tsm_root: Path) -> Path:
    cfg = tmp / "teeproxy.toml"
    cfg.write_text(
        f'state_dir = "{tmp / "state"}"\n'
        '[server]\nlisten = ["127.0.0.1:0"]\nworkers = 2\ndrain_grace = 1.0\n'
        '[backend]\nurl = "http://127.0.0.1:9"\n'
        '[admin]\nlisten = ""\n'
        f'[attestation]\nprovider = "configfs-tsm"\nconfigfs_tsm_dir = "{tsm_root}"\n'
        f'server_name = "{NAME}"\n'
    )
    return cfg


@pytest.fixture
async def served(tmp_path: Path, launch: Launch) -> AsyncIterator[tuple[Process, int, FakeTsm]]:
    report, table = await asyncio.to_thread(lambda: (dstack_report(), dstack_cert_table()))
    padded = table.ljust(16384, b"\x00")
    tsm = await asyncio.to_thread(
        FakeTsm, tmp_path / "tsm" / "report", "sev_guest", lambda rd: (report, padded)
    )
    cfg = await asyncio.to_thread(_write_config, tmp_path, tsm.root)
    p = await launch(["serve", "-c", str(cfg)])
    await asyncio.to_thread(tsm.watch, p.pid)  # the supervisor, then each worker it starts
    (m,) = await p.wait_log(r"teeproxy serving on 127\.0\.0\.1:(\d+)")
    yield p, int(m.group(1)), tsm
    await asyncio.to_thread(tsm.close)


def _verify(url: str, *args: str) -> tuple[int, dict[str, Any], str]:
    r = subprocess.run(
        [sys.executable, "-m", "proxy.cli", "verify", url, *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return r.returncode, json.loads(r.stdout) if r.stdout.strip() else {}, r.stderr


def _certificate_and_evidence(port: int, nonce: bytes) -> tuple[bytes, bytes]:
    """One TLS connection by the attestation name: its certificate, then the evidence."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=NAME) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der
        tls.sendall(
            f"GET /.well-known/tee/attestation?nonce={nonce.hex()} HTTP/1.1\r\n"
            f"Host: {NAME}\r\nConnection: close\r\n\r\n".encode()
        )
        buf = b""
        while chunk := tls.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return der, body


async def test_snp_certificate_and_evidence_carry_the_cert_table(
    served: tuple[Process, int, FakeTsm],
) -> None:
    proc, port, tsm = served
    report, table = await asyncio.to_thread(lambda: (dstack_report(), dstack_cert_table()))
    url = f"https://127.0.0.1:{port}"
    assert "RA-TLS certificate for attestation.teeproxy.invalid issued" in proc.output
    assert len(tsm.requests) >= 3  # supervisor: measurement, certificate; each worker

    rc, doc, err = await asyncio.to_thread(_verify, url, "--snp-allow-smt", "--any-measurement")
    assert rc == 1, err
    assert doc["tee"] == "sev-snp" and doc["status"] == "UpToDate"
    assert doc["collateral_source"] == "certificate"
    assert doc["endorsements"] == {"kind": "sev-snp", "carrier": "cmw"}
    assert [f["reason"] for f in doc["failures"]] == ["report-data"]
    assert doc["binding"] is False and doc["trusted"] is False
    assert doc["sev_snp"]["product"] == "Milan"
    assert "evidence" not in doc  # an untrusted certificate: nothing is sent to it

    nonce = secrets.token_bytes(32)
    der, body = await asyncio.to_thread(_certificate_and_evidence, port, nonce)
    cert = parse_certificate(der)
    assert cert.quote == report
    assert ENDORSEMENTS_OID not in cert.extensions  # none are defined for SEV-SNP
    critical, value = cert.extensions[CMW_OID]
    carried = decode_cmw(value)
    assert critical is False and carried == TsmReport("sev_guest", report, table)

    ev_doc = json.loads(body)
    assert ev_doc["tee"] == "sev-snp" and ev_doc["endorsements"]["format"] == "sev-snp-cert-table"
    opts = VerifyOptions(any_measurement=True, snp=SnpPolicy(allow_smt=True))
    ev = verify_evidence(body, nonce, cert.spki_sha256, None, opts)
    assert ev.status == "UpToDate" and ev.reasons == (Reason.REPORT_DATA,)
    assert ev.to_json()["collateral_source"] == "evidence"
    # The worker did ask its TEE over this evidence's claims (nonce and connection key).
    claims = base64.b64decode(ev_doc["claims"])
    assert report_data_for_claims(claims) in tsm.requests
