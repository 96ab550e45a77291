"""Shared fixtures: a trustme CA, in-process proxies on loopback, the blocking-call guard.

Every server here binds 127.0.0.1 on an ephemeral port and is stopped by its fixture. The
helpers behind the fixtures live in tests/helpers/proxies.py.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Iterator

import pytest
import trustme
from blockbuster import BlockBuster, blockbuster_ctx

from certmgr.store import CertStore
from proxy.dataplane.worker import Worker
from tests.helpers.proxies import ProxyFactory, RunningProxy, make_config, store_from_leaf


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test whose code blocks the event loop (aiohttp's own practice)."""
    with blockbuster_ctx(["proxy", "certmgr", "tests"]) as bb:
        yield bb


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="session")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1", "::1", key_type=trustme.KeyType.ECDSA)


@pytest.fixture(scope="session")
def client_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def proxy_factory(leaf: trustme.LeafCert) -> AsyncIterator[ProxyFactory]:
    """Start in-process proxies: ``await proxy_factory(backend_url, extra_toml)``."""
    started: list[Worker] = []

    async def start(
        backend_url: str,
        extra: str = "",
        store: CertStore | None = None,
        receipts: object = None,
    ) -> RunningProxy:
        cfg = await asyncio.to_thread(make_config, backend_url, extra)
        if store is None:
            store = await asyncio.to_thread(store_from_leaf, leaf)
        worker = Worker(cfg, store, reuse_port=False)
        worker.receipts = receipts  # a proxy.dataplane.receipts.ReceiptIssuer or None
        await worker.start()
        started.append(worker)
        return RunningProxy(worker, worker.ports[0])

    yield start
    for w in started:
        await w.drain(grace=1.0)
