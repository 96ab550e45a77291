"""The worker process: the data plane that terminates TLS and forwards.

A worker binds every TLS listener with SO_REUSEPORT (the kernel spreads connections over
the workers), runs aiohttp's HTTP/1.1 server with the proxy's protocol
(:mod:`proxy.dataplane.protocol`), answers its local endpoints and forwards everything else
(:mod:`proxy.dataplane.forward`). It is started by the supervisor
(:mod:`proxy.control.supervisor`), with which it shares only the state directory, the
listen ports, a pipe for "ready" / "reloaded" reports and signals:

- SIGTERM / SIGINT: stop accepting, let in-flight requests and streams finish for up to
  ``server.drain_grace`` seconds, then close;
- SIGHUP: re-read the config (only what a reload may change, :func:`proxy.config.reloadable`)
  and the certificates, and swap them in; listeners and open connections are untouched; in
  cluster mode with a shared receipt signer, the signing key too (the supervisor replaces
  it when the fleet's is; it goes in with the RA-TLS certificate that names it);
- SIGUSR1: the same, acknowledged over the pipe (the supervisor's ACME loop waits for it).

This module never imports the control plane or the CLI (an import-linter contract). Nor,
unless receipts are on and the runtime holds a signing key, the receipt issuer and its
signing stack (:func:`_receipt_issuer`): memory in a TEE is scarce.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing.connection
import os
import signal
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from certmgr.store import CertStore, StoreHolder
from proxy import metrics
from proxy.config import Config, load, parse_listen, reloadable
from proxy.dataplane import collector
from proxy.dataplane.acme import AcmeEvidenceEndpoint, Http01Responder
from proxy.dataplane.attestation import AttestationEndpoint, make_endpoint
from proxy.dataplane.certstore import build_store
from proxy.dataplane.endpoints import Handler, LocalEndpoints
from proxy.dataplane.forward import Forwarder, make_session
from proxy.dataplane.gate import WorkerGate
from proxy.dataplane.protocol import ProxyHTTPServer, make_request
from proxy.dataplane.tlsserver import TLSServer, create_tls_server
from proxy.errors import ConfigError
from proxy.log import server_log as log
from proxy.log import setup_logging
from proxy.runtime import (
    Runtime,
    build_runtime,
    install_uvloop,
    reload_signing_key,
    shares_signing_key,
)
from proxy.tasks import spawn
from proxy.tls import listener_context, set_acme_tls_hook

if TYPE_CHECKING:
    from certmgr.receipts.signing import SigningKey
    from proxy.dataplane.receipts import ReceiptIssuer

__all__ = ["Worker", "host_without_port", "run_worker_process"]


def _on_hello(matched: bool) -> None:
    metrics.TALLY.add(metrics.HELLO_MATCHED if matched else metrics.HELLO_UNRECOGNIZED)


@dataclass
class Worker:
    """One data-plane process (or, in tests, an in-process server on the running loop)."""

    cfg: Config
    store: CertStore
    reuse_port: bool = True
    holder: StoreHolder = field(init=False)
    ports: list[int] = field(default_factory=list)
    _servers: list[TLSServer] = field(default_factory=list)
    _redirect_runner: web.ServerRunner | None = None
    _tls_ctx: ssl.SSLContext | None = None
    gate: WorkerGate | None = None  # [governance] enforce mode: serve only while allowed
    attestation: AttestationEndpoint | None = None  # the fresh-evidence endpoint
    receipts: ReceiptIssuer | None = None  # signs responses; None: receipts off

    def __post_init__(self) -> None:
        self.holder = StoreHolder(self.store)
        self.session: aiohttp.ClientSession | None = None
        self.forwarder: Forwarder | None = None
        self.http: ProxyHTTPServer | None = None

    def endpoints(self) -> LocalEndpoints:
        """What the TLS listeners answer themselves: evidence, receipts."""
        endpoints = LocalEndpoints()
        if self.attestation is not None:
            self.attestation.register(endpoints)
        AcmeEvidenceEndpoint(self.cfg).register(endpoints)
        if self.receipts is not None:
            self.receipts.register(endpoints)
        return endpoints

    async def start(self) -> None:
        cfg = self.cfg
        self.session = make_session(cfg)
        self.forwarder = Forwarder(
            cfg, self.session, endpoints=self.endpoints(), taps=self.receipts
        )
        handler: Handler = self.forwarder.handle
        if self.gate is not None:  # on-chain policy: 503 and no listeners while not allowed
            handler = self.gate.wrap(handler)
        self.http = ProxyHTTPServer(handler, cfg.limits)
        ctx = self._tls_ctx = listener_context(self.holder, cfg.tls.min_version, _on_hello)
        set_acme_tls_hook(ctx, bool(self.store.challenges))
        if self.gate is None or await self.gate.initial():
            await self.listen()
        if self.gate is not None:
            self.gate.attach(self)
        if cfg.server.http_redirect_listen:
            await self._start_redirect(cfg)

    async def listen(self) -> None:
        """Open the TLS listeners (again after stop_listening(): on the same ports)."""
        if self.http is None or self._tls_ctx is None:
            raise RuntimeError("listen() before start()")
        for i, addr in enumerate(self.cfg.server.listen_addresses):
            srv = await create_tls_server(
                self.http,
                addr.host,
                self.ports[i] if i < len(self.ports) else addr.port,
                ssl_context=self._tls_ctx,
                handshake_timeout=self.cfg.tls.handshake_timeout,
                reuse_port=self.reuse_port,
                backlog=2048,
                admit=self.http.admit,
            )
            self._servers.append(srv)
            if i >= len(self.ports):
                self.ports.append(srv.sockets[0].getsockname()[1])

    def stop_listening(self) -> None:
        """Close the TLS listeners (no new connections); open connections are untouched."""
        for srv in self._servers:
            srv.close()
        self._servers.clear()

    async def _start_redirect(self, cfg: Config) -> None:
        local = LocalEndpoints()
        Http01Responder(cfg.state_dir).register(local)  # ACME HTTP-01 (RFC 8555 8.3)

        async def redirect(request: web.BaseRequest) -> web.StreamResponse:
            handler = local.find(request.method, request.path)
            if handler is not None:
                return await handler(request)
            host = host_without_port(request.host or "")
            if not host:
                return web.Response(status=400, text="Host header required\n")
            port = cfg.server.listen_addresses[0].port
            netloc = host if port == 443 else f"{host}:{port}"
            raise web.HTTPPermanentRedirect(f"https://{netloc}{request.rel_url.raw_path_qs}")

        runner = self._redirect_runner = web.ServerRunner(
            web.Server(redirect, access_log=None, request_factory=make_request)
        )
        await runner.setup()
        for value in cfg.server.http_redirect_listen:
            addr = parse_listen(value, "server.http_redirect_listen")
            site = web.TCPSite(runner, addr.host, addr.port, reuse_port=self.reuse_port)
            await site.start()

    def swap_signer(self, key: SigningKey) -> None:
        """Sign later receipts with ``key`` and name it in later evidence (a receipt being
        signed now keeps the key it started with: the receipt names its signer)."""
        if self.receipts is not None:
            self.receipts.key = key
        if self.attestation is not None:
            self.attestation.signing_address = key.address_hex

    def swap_store(self, store: CertStore) -> None:
        """Publish a new certificate store: later handshakes use it, open ones are untouched."""
        self.holder.current = store
        if self._tls_ctx is not None:
            set_acme_tls_hook(self._tls_ctx, bool(store.challenges))

    async def reconfigure(self, cfg: Config, store: CertStore) -> None:
        """Apply a reloaded config (SIGHUP) without touching listeners or open connections."""
        old_session = self.session
        if cfg.server.listen != self.cfg.server.listen:
            log.warning("server.listen changed: takes effect only after a restart")
        if self.forwarder is None or self.http is None:
            raise RuntimeError("reconfigure() before start()")
        if cfg.backend != self.cfg.backend or cfg.limits != self.cfg.limits:
            self.session = make_session(cfg)
        self.forwarder.reconfigure(cfg, self.session or make_session(cfg))
        if self.receipts is not None:
            self.receipts.reconfigure(cfg)
        self.http.update_limits(cfg.limits)
        self.swap_store(store)
        self.cfg = cfg
        if old_session is not None and old_session is not self.session:
            # In-flight requests still hold the old pool: close it once they had their time.
            spawn(_close_later(old_session, cfg.server.drain_grace), "close-old-session")

    async def drain(self, grace: float | None = None) -> None:
        """Stop accepting, let in-flight requests finish for ``grace`` s, then close all."""
        grace = self.cfg.server.drain_grace if grace is None else grace
        if self.gate is not None:
            self.gate.close()
        if self.forwarder is not None:
            self.forwarder.draining = True
        for srv in self._servers:
            srv.close()
        if self._redirect_runner is not None:
            await self._redirect_runner.cleanup()
        if self.http is not None:
            await self.http.shutdown(grace)
        if self.forwarder is not None:
            self.forwarder.close()
        if self.session is not None:
            await self.session.close()
        if self.receipts is not None:
            await self.receipts.store.close()
        metrics.TALLY.flush()  # what the last requests counted


def host_without_port(host: str) -> str:
    """The host of a Host header value: port dropped, an IPv6 literal kept in brackets.

    ``rsplit(":")`` would cut ``[::1]`` (no port) to ``[:``.
    """
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 1 else ""
    return host.partition(":")[0]


async def _close_later(session: aiohttp.ClientSession, delay: float) -> None:
    await asyncio.sleep(delay)
    await session.close()


async def _receipt_issuer(
    cfg: Config, runtime: Runtime, receipt_store: str
) -> ReceiptIssuer | None:
    """The receipt issuer, imported only when there is a key to sign with (runtime.py loads
    one only with ``[receipts] enabled``)."""
    if runtime.signing_key is None:
        if cfg.receipts.enabled:
            log.warning("receipts are off: no attestation provider or signing key in this worker")
        return None
    from proxy.dataplane.receipts import worker_issuer  # noqa: PLC0415 - only with receipts

    return await worker_issuer(cfg, runtime, receipt_store)


def run_worker_process(
    cfg: Config,
    config_path: str | None,
    conn: multiprocessing.connection.Connection,
    receipt_store: str = "",
) -> None:
    """Entry point of a worker process (multiprocessing 'spawn')."""
    # A SIGHUP relayed while this worker starts must not kill it (the default action): it
    # is ignored until the event loop installs the reload handler.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # ACME reload with acknowledgement
    setup_logging(cfg.logging.level)
    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker_main(cfg, config_path, conn, receipt_store))


async def _worker_main(
    cfg: Config,
    config_path: str | None,
    conn: multiprocessing.connection.Connection,
    receipt_store: str = "",
) -> None:
    runtime = await asyncio.to_thread(build_runtime, cfg, prepare=False)
    sealer = runtime.sealer
    store = await asyncio.to_thread(build_store, cfg, sealer)
    worker = Worker(cfg, store)
    worker.attestation = make_endpoint(cfg, worker.holder, runtime)
    worker.receipts = await _receipt_issuer(cfg, runtime, receipt_store)
    worker.gate = WorkerGate.for_config(cfg)  # enforce: serve only while the policy allows
    await worker.start()
    collector.settle()
    spawn(collector.full_collections(), "full-gc")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def reload(ack: bool = False) -> None:
        try:
            new_cfg = await asyncio.to_thread(load, config_path) if config_path else worker.cfg
            # Like the supervisor, apply only what a reload may change: [server] (the listen
            # ports it resolved, drain_grace), [admin] and state_dir need a restart.
            new_cfg = reloadable(worker.cfg, new_cfg)
            new_store = await asyncio.to_thread(build_store, new_cfg, sealer)
            key = None
            if shares_signing_key(new_cfg) and worker.receipts is not None:
                key = await asyncio.to_thread(reload_signing_key, new_cfg, sealer)
        except (ConfigError, OSError, ValueError) as e:
            log.error("reload failed, keeping the running config and certificates: %s", e)
            if ack:
                conn.send(("reload-failed", os.getpid()))
            return
        if key is not None:  # with the store that holds the RA-TLS certificate naming it
            worker.swap_signer(key)
        await worker.reconfigure(new_cfg, new_store)
        log.info("worker %d reloaded (%d certificates)", os.getpid(), len(new_store.entries))
        if ack:  # SIGUSR1: the supervisor's ACME loop waits for this
            conn.send(("reloaded", os.getpid()))

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: spawn(reload(), "reload"))
    loop.add_signal_handler(signal.SIGUSR1, lambda: spawn(reload(ack=True), "reload-ack"))
    conn.send(("ready", os.getpid(), worker.ports))
    await stop.wait()
    log.info("worker %d draining (grace %.0f s)", os.getpid(), cfg.server.drain_grace)
    await worker.drain()
