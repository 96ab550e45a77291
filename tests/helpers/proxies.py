"""In-process proxies on loopback: test configs, certificate stores from trustme leaves.

The ``proxy_factory`` fixture (tests/conftest.py) starts :class:`proxy.dataplane.worker.Worker`
instances with these and returns a :class:`RunningProxy` for each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certmgr.store import CertStore, entry_from_key
from proxy.config import Config, loads
from proxy.dataplane.worker import Worker
from proxy.tls import context_factory


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
