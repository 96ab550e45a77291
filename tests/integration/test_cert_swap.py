"""Certificate store swaps under load, and SNI selection, over real TLS handshakes."""

from __future__ import annotations

import asyncio
import ssl
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
import pytest
import trustme
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpServer

from certmgr.store import CertStore
from proxy import metrics
from proxy.tasks import spawn
from tests.helpers.proxies import ProxyFactory, store_from_leaf

CLIENTS = 8
SWAPS = 6
MAX_REQUESTS = 3000  # bound on the whole load run (it stops earlier, once the swaps are done)


@pytest.fixture(scope="module")
def ca_b() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def leaf_b(ca_b: trustme.CA) -> trustme.LeafCert:
    return ca_b.issue_cert("localhost", "127.0.0.1", "::1", key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="module")
def store_a(leaf: trustme.LeafCert) -> CertStore:
    return store_from_leaf(leaf, source="A")


@pytest.fixture(scope="module")
def store_b(leaf_b: trustme.LeafCert) -> CertStore:
    return store_from_leaf(leaf_b, source="B")


@pytest.fixture(scope="module")
def trust_both(ca: trustme.CA, ca_b: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ca_b.configure_trust(ctx)
    return ctx


def der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def _ok(_request: web.BaseRequest) -> web.Response:
    return web.Response(text="ok")


async def backend(aiohttp_server: AiohttpServer) -> str:
    app = web.Application()
    app.router.add_get("/{tail:.*}", _ok)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}"


def peer_der(writer: asyncio.StreamWriter) -> bytes:
    sslobj = writer.get_extra_info("ssl_object")
    assert sslobj is not None
    cert = sslobj.getpeercert(binary_form=True)
    assert cert is not None
    return bytes(cert)


async def handshake_cert(
    port: int, ctx: ssl.SSLContext, server_hostname: str | None = "localhost"
) -> bytes:
    """Open a fresh TLS connection and return the certificate the server presented."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
    )
    try:
        return peer_der(writer)
    finally:
        writer.close()
        await writer.wait_closed()


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes]:
    """One keep-alive HTTP/1.1 GET on an open connection (response has Content-Length)."""
    writer.write(b"GET /keepalive HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ln)
    }
    assert headers.get("connection", "").lower() != "close"
    body = await reader.readexactly(int(headers["content-length"]))
    return status, body


@dataclass
class Load:
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    seen: Counter[bytes] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)


async def _new_connection_client(
    port: int, ctx: ssl.SSLContext, stop: asyncio.Event, load: Load
) -> None:
    """One request per connection: every request is a new TLS handshake."""
    while not stop.is_set() and load.total < MAX_REQUESTS:
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
            try:
                load.seen[peer_der(writer)] += 1
                status, body = await raw_get(reader, writer)
            finally:
                writer.close()
                await writer.wait_closed()
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            load.failures.append(repr(e))
            continue
        if status == 200 and body == b"ok":
            load.ok += 1
        else:
            load.failures.append(f"{status} {body[:100]!r}")


async def _keepalive_client(url: str, ctx: ssl.SSLContext, stop: asyncio.Event, load: Load) -> None:
    """Requests over one pooled keep-alive connection (reopened only if the server closes it)."""
    connector = aiohttp.TCPConnector(ssl=ctx, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        while not stop.is_set() and load.total < MAX_REQUESTS:
            try:
                async with session.get(f"{url}/load") as resp:
                    body = await resp.read()
            except (aiohttp.ClientError, OSError) as e:
                load.failures.append(repr(e))
                continue
            if resp.status == 200 and body == b"ok":
                load.ok += 1
            else:
                load.failures.append(f"{resp.status} {body[:100]!r}")


async def _wait_for_more(load: Load, n: int) -> None:
    target = load.total + n
    async with asyncio.timeout(20):
        while load.total < target:  # noqa: ASYNC110 - waits on progress of other tasks
            await asyncio.sleep(0.01)


async def test_swap_under_load_no_failures_and_new_handshakes_use_new_cert(
    *,
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    store_a: CertStore,
    store_b: CertStore,
    trust_both: ssl.SSLContext,
    leaf: trustme.LeafCert,
    leaf_b: trustme.LeafCert,
) -> None:
    proxy = await proxy_factory(await backend(aiohttp_server), store=store_a)
    cert_a, cert_b = der(leaf), der(leaf_b)
    assert await handshake_cert(proxy.port, trust_both) == cert_a

    # A keep-alive connection opened before any swap.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", proxy.port, ssl=trust_both, server_hostname="localhost"
    )
    try:
        assert await raw_get(reader, writer) == (200, b"ok")
        assert peer_der(writer) == cert_a

        load, stop = Load(), asyncio.Event()
        clients = [
            spawn(
                _new_connection_client(proxy.port, trust_both, stop, load)
                if i % 2
                else _keepalive_client(proxy.url, trust_both, stop, load),
                f"load-client-{i}",
            )
            for i in range(CLIENTS)
        ]
        try:
            await _wait_for_more(load, 40)
            for n in range(SWAPS):
                proxy.worker.swap_store(store_b if n % 2 == 0 else store_a)
                await _wait_for_more(load, 40)
                # The old keep-alive connection keeps working across every swap.
                assert await raw_get(reader, writer) == (200, b"ok")
            # SWAPS is even: back on A. One more swap to B, then check fresh handshakes.
            proxy.worker.swap_store(store_b)
            await _wait_for_more(load, 20)
        finally:
            stop.set()
            await asyncio.gather(*clients)

        assert load.failures == [], load.failures[:5]
        assert load.ok >= 40 * (SWAPS + 1)
        # New connections under load saw both certificates: the swaps took effect mid-load.
        assert load.seen[cert_a] > 0 and load.seen[cert_b] > 0, load.seen
        assert set(load.seen) == {cert_a, cert_b}

        assert await handshake_cert(proxy.port, trust_both) == cert_b
        # The connection opened before the swaps still has A's session and still serves.
        assert peer_der(writer) == cert_a
        assert await raw_get(reader, writer) == (200, b"ok")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_swap_refused_by_client_that_trusts_only_the_old_ca(
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    store_a: CertStore,
    store_b: CertStore,
    client_ssl: ssl.SSLContext,
) -> None:
    """The swap really changes what is presented: a client trusting only CA A now fails."""
    proxy = await proxy_factory(await backend(aiohttp_server), store=store_a)
    await handshake_cert(proxy.port, client_ssl)
    proxy.worker.swap_store(store_b)
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake_cert(proxy.port, client_ssl)


# -- SNI over real handshakes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sni_leaves(ca: trustme.CA) -> dict[str, trustme.LeafCert]:
    return {
        name: ca.issue_cert(f"{name}.test", key_type=trustme.KeyType.ECDSA)
        for name in ("default", "a", "b")
    }


def _sni_store(leaves: dict[str, trustme.LeafCert], *, strict: bool) -> CertStore:
    entries = [store_from_leaf(leaves[n], source=n).entries[0] for n in ("default", "a", "b")]
    return CertStore.build(entries, strict_sni=strict)


@pytest.fixture(scope="module")
def sni_store(sni_leaves: dict[str, trustme.LeafCert]) -> CertStore:
    return _sni_store(sni_leaves, strict=False)


@pytest.fixture(scope="module")
def strict_store(sni_leaves: dict[str, trustme.LeafCert]) -> CertStore:
    return _sni_store(sni_leaves, strict=True)


def _hellos(result: str) -> float:
    """ClientHellos counted by the in-process proxy with this result."""
    metrics.TALLY.flush()  # the data plane's counts wait there up to FLUSH_INTERVAL
    for metric in metrics.TLS_HELLOS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("result") == result:
                return sample.value
    return 0.0


@pytest.fixture
def no_hostname_check(ca: trustme.CA) -> ssl.SSLContext:
    """Verifies the chain but not the name: for handshakes where the name is the question."""
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    return ctx


async def test_sni_selects_certificate_per_name(
    *,
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    sni_store: CertStore,
    sni_leaves: dict[str, trustme.LeafCert],
    client_ssl: ssl.SSLContext,
    no_hostname_check: ssl.SSLContext,
) -> None:
    proxy = await proxy_factory(await backend(aiohttp_server), store=sni_store)
    port = proxy.port
    assert await handshake_cert(port, client_ssl, "a.test") == der(sni_leaves["a"])
    assert await handshake_cert(port, client_ssl, "b.test") == der(sni_leaves["b"])
    assert await handshake_cert(port, client_ssl, "B.Test") == der(sni_leaves["b"])
    assert await handshake_cert(port, client_ssl, "default.test") == der(sni_leaves["default"])
    # No SNI (a client connecting to an IP address sends none): the default certificate.
    assert await handshake_cert(port, no_hostname_check, "127.0.0.1") == der(sni_leaves["default"])
    assert await handshake_cert(port, no_hostname_check, None) == der(sni_leaves["default"])
    # Unknown names get the default when strict_sni is off (and fail the client's check).
    assert await handshake_cert(port, no_hostname_check, "c.test") == der(sni_leaves["default"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake_cert(port, client_ssl, "c.test")


async def test_strict_sni_refuses_handshakes_for_unknown_names(
    *,
    aiohttp_server: AiohttpServer,
    proxy_factory: ProxyFactory,
    strict_store: CertStore,
    sni_leaves: dict[str, trustme.LeafCert],
    client_ssl: ssl.SSLContext,
    no_hostname_check: ssl.SSLContext,
) -> None:
    proxy = await proxy_factory(await backend(aiohttp_server), store=strict_store)
    refused_before = _hellos("unrecognized_name")
    with pytest.raises(ssl.SSLError) as refused:
        await handshake_cert(proxy.port, no_hostname_check, "unknown.test")
    # Refused by the SNI policy, and the client is told why: OpenSSL writes its
    # unrecognized_name alert to the socket itself (proxy/dataplane/tlsserver.py; asyncio's
    # and uvloop's own TLS transports dropped alerts on a failed handshake, CPython
    # gh-98078, so a client saw the connection closed instead).
    assert refused.value.reason == "TLSV1_UNRECOGNIZED_NAME"
    assert _hellos("unrecognized_name") == refused_before + 1
    # Known names still work, and a client without SNI still gets the default.
    assert await handshake_cert(proxy.port, client_ssl, "a.test") == der(sni_leaves["a"])
    assert await handshake_cert(proxy.port, no_hostname_check, None) == der(sni_leaves["default"])
    # Requests flow on a matched name.
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"https://127.0.0.1:{proxy.port}/x",
            ssl=client_ssl,
            server_hostname="b.test",
        ) as resp,
    ):
        assert resp.status == 200
        assert await resp.text() == "ok"
