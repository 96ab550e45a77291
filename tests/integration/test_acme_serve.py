"""``teeproxy serve`` with an ``[acme]`` section gets its certificate with no manual step.

A real supervisor with two worker processes, a real Pebble and Knot: the supervisor orders
the certificate, publishes the TLS-ALPN-01 challenge, has every worker load it (SIGHUP and
the worker pipe), Pebble validates on the TLS listener, and the workers then serve the
issued certificate. Also: ``teeproxy caa`` prints the pinning records for that account.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from tests.helpers.acme_harness import pebble_root
from tests.helpers.acme_peers import Knot, PebbleFactory, acme_toml
from tests.helpers.serve import REPO, Launch

pytestmark = pytest.mark.slow


def _served(port: int, name: str) -> x509.Certificate | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    import socket

    try:
        with (
            socket.create_connection(("127.0.0.1", port), 2) as raw,
            ctx.wrap_socket(raw, server_hostname=name) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _wait_issued(port: int, name: str, within: float) -> x509.Certificate:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        cert = _served(port, name)
        if cert is not None:
            cn = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
            if cn and "Pebble" in str(cn[0].value):
                return cert
        time.sleep(0.2)
    raise AssertionError(f"no Pebble-issued certificate for {name} within {within} s")


async def test_serve_obtains_certificate_with_no_manual_step(
    tmp_path: Path, knot: Knot, pebble_factory: PebbleFactory, launch: Launch
) -> None:
    pebble = await asyncio.to_thread(pebble_factory)
    text = acme_toml(
        tmp_path / "state",
        pebble,
        knot,
        "http://127.0.0.1:9",
        ("a.example.test",),
        challenge="tls-alpn-01",
    ).replace("workers = 1", "workers = 2")
    cfg = tmp_path / "teeproxy.toml"
    await asyncio.to_thread(cfg.write_text, text)
    proc = await launch(["serve", "-c", str(cfg)])
    await proc.wait_log(r"teeproxy serving on")
    cert = await asyncio.to_thread(_wait_issued, pebble.tls_port, "a.example.test", 60.0)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example.test"]
    # It chains to Pebble's root: a client that trusts that root verifies it by name.
    root = await asyncio.to_thread(pebble_root, pebble)
    ctx = ssl.create_default_context(cadata=root.decode())
    _r, w = await asyncio.open_connection(
        "127.0.0.1", pebble.tls_port, ssl=ctx, server_hostname="a.example.test"
    )
    w.close()
    await proc.wait_log(r"certificate issued by https://127\.0\.0\.1:\d+/dir")
    assert "PRIVATE KEY" not in proc.output

    # `teeproxy caa` pins issuance to the account just created (public data only).
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "proxy.cli", "caa", "a.example.test", "-c", str(cfg), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    account = f"https://127.0.0.1:{pebble.port}/my-account/"
    assert f'a.example.test. IN CAA 0 issue "pebble.test; accounturi={account}' in out.stdout, (
        out.stdout
    )
    assert "validationmethods=tls-alpn-01" in out.stdout
    assert "; a.example.test: allowed" in out.stdout
