"""Shared fixtures: a trustme CA, in-process proxies on loopback, the blocking-call guard.

Every server here binds 127.0.0.1 on an ephemeral port and is stopped by its fixture.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from blockbuster import BlockBuster, blockbuster_ctx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.store import CertStore, entry_from_key
from proxy.config import Config, loads
from proxy.dataplane.worker import Worker
from proxy.tls import context_factory


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


def store_from_leaf(leaf: trustme.LeafCert, source: str = "test") -> CertStore:
    """A CertStore serving a trustme leaf (blocking: loads an SSL context)."""
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    chain = b"".join(b.bytes() for b in leaf.cert_chain_pems)
    return CertStore.build([entry_from_key(chain, key, context_factory(), source=source)])


def make_config(backend_url: str, extra: str = "", state_dir: Path | None = None) -> Config:
    """A test config: one listener on an ephemeral loopback port, no admin, quiet logs.

    ``extra`` is TOML appended verbatim (use full section headers, e.g. "[limits]\\n...").
    """
    sections: dict[str, list[str]] = {
        "server": ['listen = ["127.0.0.1:0"]', "workers = 1", "drain_grace = 5.0"],
        "backend": [f'url = "{backend_url}"'],
        "admin": ['listen = ""'],
        "logging": ["access_log = false"],
    }
    # Merge extra keys into the sections above so a section header never repeats.
    current = ""
    top: list[str] = []
    for line in extra.splitlines():
        stripped = line.strip()
        if stripped.startswith("[") and not stripped.startswith("[["):
            current = stripped.strip("[]")
            sections.setdefault(current, [])
        elif stripped:
            (sections[current] if current else top).append(stripped)
    text = f'state_dir = "{state_dir or "/nonexistent-teeproxy-test"}"\n' + "\n".join(top) + "\n"
    for name, lines in sections.items():
        text += f"[{name}]\n" + "\n".join(lines) + "\n"
    return loads(text)


@dataclass
class RunningProxy:
    worker: Worker
    port: int

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"


ProxyFactory = Callable[..., Awaitable[RunningProxy]]


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
