"""TLS policy over real sockets: versions, AEAD-only ciphers, ALPN, HSTS, and a testssl.sh scan."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import ssl
import subprocess
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from tests.helpers.proxies import ProxyFactory, RunningProxy

AEAD = re.compile(r"GCM|CHACHA20|CCM")


async def _ok(_request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


@pytest.fixture
async def backend_url(aiohttp_server: AiohttpServer) -> str:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _ok)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def proxy(proxy_factory: ProxyFactory, backend_url: str) -> RunningProxy:
    return await proxy_factory(backend_url)


def client_for(
    ca: trustme.CA, version: ssl.TLSVersion, ciphers: str = "DEFAULT:@SECLEVEL=0"
) -> ssl.SSLContext:
    """A client speaking exactly ``version`` (legacy versions need OpenSSL SECLEVEL 0)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    ctx.set_ciphers(ciphers)
    ctx.minimum_version = version
    ctx.maximum_version = version
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


async def connect(port: int, ctx: ssl.SSLContext) -> ssl.SSLObject:
    """Complete a TLS handshake with 127.0.0.1:port; return the (already closed) SSL object."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    sslobj: ssl.SSLObject = writer.get_extra_info("ssl_object")
    writer.close()
    await writer.wait_closed()
    return sslobj


@pytest.fixture(scope="module")
def lax_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(ctx)
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    return ctx


@pytest.fixture
async def lax_server(lax_context: ssl.SSLContext) -> AsyncIterator[int]:
    """A control server accepting anything down to TLS 1.0 and CBC suites (same cert)."""

    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=lax_context)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")],
)
async def test_tls10_and_tls11_clients_fail(
    ca: trustme.CA, proxy: RunningProxy, lax_server: int, version: ssl.TLSVersion, name: str
) -> None:
    ctx = client_for(ca, version)
    # Control: this client does speak the old version with a server that allows it.
    assert (await connect(lax_server, ctx)).version() == name
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(proxy.port, ctx)


@pytest.mark.parametrize(
    ("version", "name"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
async def test_tls12_and_tls13_succeed_with_aead_and_http11_alpn(
    ca: trustme.CA, proxy: RunningProxy, version: ssl.TLSVersion, name: str
) -> None:
    sslobj = await connect(proxy.port, client_for(ca, version, "DEFAULT"))
    assert sslobj.version() == name
    assert sslobj.selected_alpn_protocol() == "http/1.1"
    cipher = sslobj.cipher()
    assert cipher is not None and AEAD.search(cipher[0]), cipher


async def test_tls12_client_offering_only_cbc_suites_fails(
    ca: trustme.CA, proxy: RunningProxy, lax_server: int
) -> None:
    ctx = client_for(
        ca, ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"
    )
    cipher = (await connect(lax_server, ctx)).cipher()
    assert cipher is not None and cipher[0] in (
        "ECDHE-ECDSA-AES128-SHA256",
        "ECDHE-ECDSA-AES128-SHA",
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(proxy.port, ctx)


async def test_min_version_13_refuses_tls12(
    ca: trustme.CA, proxy_factory: ProxyFactory, backend_url: str
) -> None:
    proxy = await proxy_factory(backend_url, '[tls]\nmin_version = "1.3"')
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await connect(proxy.port, client_for(ca, ssl.TLSVersion.TLSv1_2, "DEFAULT"))
    assert (await connect(proxy.port, client_for(ca, ssl.TLSVersion.TLSv1_3))).version() == (
        "TLSv1.3"
    )


async def test_hsts_header_when_configured(
    proxy_factory: ProxyFactory, backend_url: str, client_ssl: ssl.SSLContext
) -> None:
    with_hsts = await proxy_factory(
        backend_url, "[tls]\nhsts_max_age = 31536000\nhsts_include_subdomains = true"
    )
    only_age = await proxy_factory(backend_url, "[tls]\nhsts_max_age = 600")
    without = await proxy_factory(backend_url)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{with_hsts.url}/x", ssl=client_ssl) as resp:
            assert resp.status == 200
            assert resp.headers.getall("Strict-Transport-Security") == [
                "max-age=31536000; includeSubDomains"
            ]
        async with s.get(f"{only_age.url}/x", ssl=client_ssl) as resp:
            assert resp.headers.getall("Strict-Transport-Security") == ["max-age=600"]
        async with s.get(f"{without.url}/x", ssl=client_ssl) as resp:
            assert resp.status == 200
            assert "Strict-Transport-Security" not in resp.headers


# -- testssl.sh ------------------------------------------------------------------------------


def _run_testssl(port: int, out: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("testssl") or shutil.which("testssl.sh")
    if exe is None:
        pytest.fail(
            "testssl is not installed: install the Debian package testssl.sh "
            "(apt-get install testssl.sh); this test never skips"
        )
    return subprocess.run(
        [
            exe,
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "batch",
            # No (reverse) DNS lookups for a loopback target: they only add timeouts.
            "--nodns",
            "min",
            "--protocols",
            "--cipher-per-proto",
            "--jsonfile-pretty",
            str(out),
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _findings(scan: dict[str, Any], section: str) -> list[dict[str, str]]:
    result: list[dict[str, str]] = scan["scanResult"][0].get(section, [])
    return result


async def test_testssl_scan_finds_only_tls12_13_and_aead_ciphers(
    proxy: RunningProxy, tmp_path: Path
) -> None:
    out = tmp_path / "testssl.json"
    proc = await asyncio.to_thread(_run_testssl, proxy.port, out)
    text = await asyncio.to_thread(lambda: out.read_text() if out.exists() else "")
    assert text, f"testssl wrote no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
    scan = json.loads(text)

    protocols = {f["id"]: f["finding"] for f in _findings(scan, "protocols")}
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert protocols.get(old) == "not offered", (old, protocols)
    assert protocols.get("TLS1_2") == "offered", protocols
    assert protocols.get("TLS1_3", "").startswith("offered"), protocols
    assert protocols.get("ALPN") == "http/1.1", protocols

    ciphers = [f for f in _findings(scan, "cipherTests") if f["id"].startswith("cipher-")]
    assert ciphers, f"testssl found no cipher at all:\n{proc.stdout[-3000:]}"
    offered: list[str] = []
    for f in ciphers:
        fields = f["finding"].split()
        # "TLS 1.2   xc02c   ECDHE-ECDSA-AES256-GCM-SHA384  ECDH 256  AESGCM  256  TLS_ECDHE_..."
        openssl_name, iana_name = fields[3], fields[-1]
        offered.append(openssl_name)
        assert AEAD.search(openssl_name) and AEAD.search(iana_name), f["finding"]
        assert fields[0:2] == ["TLS", "1.2"] or fields[0:2] == ["TLS", "1.3"], f["finding"]
    assert any("CHACHA20" in c for c in offered) and any("GCM" in c for c in offered), offered
