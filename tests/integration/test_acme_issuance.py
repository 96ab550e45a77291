"""Full issuance against a real Pebble with real validation (HTTP-01, TLS-ALPN-01, DNS-01).

Pebble resolves names through a real Knot; every challenge is validated over loopback by
Pebble itself (no PEBBLE_VA_ALWAYS_VALID). After issuance the proxy serves the new
certificate, which verifies against Pebble's root for the ordered names.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import stat
from pathlib import Path

import aiohttp
import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certmgr.acme.challenges.tlsalpn01 import acme_identifier_digest
from tests.helpers.acme_harness import Harness, LoopbackResolver, start_harness
from tests.helpers.acme_peers import Knot, PebbleFactory

pytestmark = pytest.mark.slow


async def _get(h: Harness, name: str, path: str = "/") -> tuple[int, str]:
    ctx = await h.client_ctx()
    conn = aiohttp.TCPConnector(ssl=ctx, resolver=LoopbackResolver())
    async with (
        aiohttp.ClientSession(connector=conn) as s,
        s.get(f"https://{name}:{h.worker.ports[0]}{path}") as r,
    ):
        return r.status, await r.text()


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def _check_state_files(acme_dir: Path) -> None:
    for name in ("cert.key.sealed", "cert.pem", "cert.json"):
        assert stat.S_IMODE((acme_dir / name).stat().st_mode) == 0o600
    # No key in plaintext anywhere in the state dir.
    for f in acme_dir.rglob("*"):
        if f.is_file():
            assert b"PRIVATE KEY" not in f.read_bytes(), f
    # Challenge answers were removed after the order.
    assert not list((acme_dir / "challenges" / "http-01").glob("*"))


def _txt_count(knot: Knot, name: str) -> int:
    q = dns.message.make_query(name, dns.rdatatype.TXT)
    resp = dns.query.udp(q, "127.0.0.1", port=knot.port, timeout=2)
    return sum(len(r) for r in resp.answer if r.rdtype == dns.rdatatype.TXT)


async def test_http01_issuance_serves_verified_certificate(
    tmp_path: Path, knot: Knot, pebble_factory: PebbleFactory, acme_backend: str
) -> None:
    pebble = await asyncio.to_thread(pebble_factory)
    names = ("a.example.test", "www.example.test")
    h = await start_harness(tmp_path, pebble, knot, acme_backend, names, challenge="http-01")
    try:
        # Before: the development certificate (localhost), not one for our names.
        before = await h.served_cert("a.example.test")
        assert "a.example.test" not in _sans(before)
        await h.manager.step()
        assert h.manager.failures == 0, h.manager.last_error
        served = await h.served_cert("www.example.test")
        assert _sans(served) == set(names)
        status, text = await _get(h, "a.example.test")
        assert (status, text) == (200, "backend ok")
        # The plain listener: challenge path 404 once withdrawn, everything else redirects.
        plain = f"http://127.0.0.1:{pebble.http_port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{plain}/.well-known/acme-challenge/{'A' * 43}") as r:
                assert r.status == 404
            async with s.get(f"{plain}/v1/models", allow_redirects=False) as r:
                assert r.status == 308
                assert r.headers["Location"].startswith("https://127.0.0.1:")
        await asyncio.to_thread(_check_state_files, tmp_path / "state" / "acme")
        # Evidence endpoint: account URI and the SPKI hash of the served key.
        status, body = await _get(h, "a.example.test", "/.well-known/tee/acme")
        doc = json.loads(body)
        spki = hashlib.sha256(
            served.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
        assert status == 200
        assert doc["account_uri"].startswith(f"https://127.0.0.1:{pebble.port}/")
        assert [k["spki_sha256"] for k in doc["certificate_keys"]] == [spki]
    finally:
        await h.worker.drain(grace=0.5)


async def test_tlsalpn01_issuance(
    tmp_path: Path, knot: Knot, pebble_factory: PebbleFactory, acme_backend: str
) -> None:
    pebble = await asyncio.to_thread(pebble_factory)
    h = await start_harness(
        tmp_path, pebble, knot, acme_backend, ("b.example.test",), challenge="tls-alpn-01"
    )
    seen: list[tuple[bool, bool]] = []
    publisher = h.manager.issuer().publisher
    orig = publisher.commit

    def commit_and_probe() -> None:
        orig()
        # While the challenge is pending: an acme-tls/1 hello gets the challenge certificate,
        # a normal client still gets the regular (development) certificate.
        fut_a = asyncio.run_coroutine_threadsafe(
            h.served_cert("b.example.test", ["acme-tls/1"]), loop
        )
        fut_n = asyncio.run_coroutine_threadsafe(
            h.served_cert("b.example.test", ["http/1.1"]), loop
        )
        a, n = fut_a.result(5), fut_n.result(5)
        seen.append((acme_identifier_digest(a) is not None, acme_identifier_digest(n) is not None))

    loop = asyncio.get_running_loop()
    publisher.commit = commit_and_probe  # type: ignore[method-assign]
    try:
        await h.manager.step()
        assert seen == [(True, False)]
        assert h.manager.failures == 0, h.manager.last_error
        served = await h.served_cert("b.example.test")
        assert _sans(served) == {"b.example.test"}
        assert acme_identifier_digest(served) is None
        assert not h.worker.holder.current.challenges  # challenge withdrawn
        assert (await _get(h, "b.example.test"))[0] == 200
    finally:
        await h.worker.drain(grace=0.5)


async def test_dns01_issuance_with_wildcard_and_cleanup(
    tmp_path: Path, knot: Knot, pebble_factory: PebbleFactory, acme_backend: str
) -> None:
    pebble = await asyncio.to_thread(pebble_factory)
    names = ("c.example.test", "*.example.test")
    h = await start_harness(tmp_path, pebble, knot, acme_backend, names, challenge="dns-01")
    try:
        await h.manager.step()
        assert h.manager.failures == 0, h.manager.last_error
        served = await h.served_cert("c.example.test")
        assert _sans(served) == set(names)
        # A name only the wildcard covers is served the ACME certificate too.
        assert _sans(await h.served_cert("d.example.test")) == set(names)
        assert (await _get(h, "d.example.test"))[0] == 200
        # TXT records removed afterwards (checked on the authoritative server).
        assert await asyncio.to_thread(_txt_count, knot, "_acme-challenge.c.example.test.") == 0
        assert await asyncio.to_thread(_txt_count, knot, "_acme-challenge.example.test.") == 0
    finally:
        await h.worker.drain(grace=0.5)
