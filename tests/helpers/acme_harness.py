"""Helpers for the ACME integration tests: an in-process proxy (Worker) plus AcmeManager.

The worker listens on the ports Pebble validates (``httpPort`` for HTTP-01 on the plain
listener, ``tlsPort`` for TLS-ALPN-01 on the TLS listener); ``reload`` rebuilds the store
and swaps it in, as a worker does on SIGHUP.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiohttp.abc
from cryptography import x509

import certmgr.acme.caa
import certmgr.acme.client
from certmgr.keys import InsecureDevSealer
from proxy.config import Config, loads
from proxy.control.acme import AcmeManager
from proxy.control.certificates import prepare_certificates
from proxy.dataplane.certstore import build_store
from proxy.dataplane.worker import Worker
from proxy.runtime import build_runtime
from tests.helpers.acme_peers import Knot, Pebble, acme_toml

# Keep the library imports (certmgr.acme.client, certmgr.acme.caa) done at collection, off the loop.
_PRELOADED = (certmgr.acme.client, certmgr.acme.caa)


@dataclass
class Harness:
    cfg: Config
    worker: Worker
    manager: AcmeManager
    pebble: Pebble
    reloads: int = 0

    async def root_pem(self) -> bytes:
        return await asyncio.to_thread(pebble_root, self.pebble)

    async def client_ctx(self) -> ssl.SSLContext:
        pem = await self.root_pem()
        ctx = await asyncio.to_thread(ssl.create_default_context)
        ctx.load_verify_locations(cadata=pem.decode())
        return ctx

    async def served_cert(self, name: str, alpn: list[str] | None = None) -> x509.Certificate:
        """The leaf the TLS listener presents for SNI ``name`` (no verification)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if alpn:
            ctx.set_alpn_protocols(alpn)
        _r, w = await asyncio.open_connection(
            "127.0.0.1", self.worker.ports[0], ssl=ctx, server_hostname=name
        )
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        w.transport.abort()
        return x509.load_der_x509_certificate(der)


def pebble_root(pebble: Pebble) -> bytes:
    ctx = ssl.create_default_context(cafile=str(pebble.ca_bundle))
    url = f"https://127.0.0.1:{pebble.mgmt_port}/roots/0"
    with urllib.request.urlopen(url, context=ctx, timeout=5) as resp:
        data: bytes = resp.read()
        return data


async def start_harness(
    tmp_path: Path,
    pebble: Pebble,
    knot: Knot,
    backend_url: str,
    names: tuple[str, ...],
    *,
    challenge: str,
    extra: str = "",
    directories: tuple[str, ...] = (),
    state_dir: Path | None = None,
    clock: object = None,
) -> Harness:
    state = state_dir or tmp_path / "state"
    text = acme_toml(
        state,
        pebble,
        knot,
        backend_url,
        names,
        challenge=challenge,
        extra=extra,
        directories=directories,
    )
    cfg = await asyncio.to_thread(loads, text)
    sealer = InsecureDevSealer()
    await asyncio.to_thread(
        prepare_certificates,
        cfg,
        await asyncio.to_thread(build_runtime, cfg, prepare=True, sealer=sealer),
    )
    store = await asyncio.to_thread(build_store, cfg, sealer)
    worker = Worker(cfg, store, reuse_port=False)
    await worker.start()
    h: Harness

    async def reload() -> None:
        new = await asyncio.to_thread(build_store, cfg, sealer)
        worker.swap_store(new)
        h.reloads += 1

    kwargs = {"clock": clock} if clock is not None else {}
    manager = AcmeManager(cfg, sealer, reload, **kwargs)  # type: ignore[arg-type]
    h = Harness(cfg, worker, manager, pebble)
    return h


class LoopbackResolver(aiohttp.abc.AbstractResolver):
    """Resolve every name to 127.0.0.1 (the client side of the ACME tests)."""

    async def resolve(  # type: ignore[override]
        self, host: str, port: int = 0, family: int = 0
    ) -> list[dict[str, object]]:
        del family
        return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2, "proto": 0}]

    async def close(self) -> None:
        return None
