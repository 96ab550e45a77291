"""Listeners and process model: the worker (data plane) and the supervisor (control plane).

Supervisor (``teeproxy serve``): validates the config, prepares certificates, reserves the
listen ports, starts N worker processes, serves the admin endpoints, renews the development
certificate, restarts a worker that dies, and relays signals:

- SIGTERM / SIGINT: every worker stops accepting, lets in-flight requests and streams finish
  for up to ``server.drain_grace`` seconds, then closes; the supervisor exits when all have.
- SIGHUP: the config file is read and validated again (an invalid file is logged and
  ignored), certificates are prepared again, and each worker swaps in the new certificate
  store and settings. Listening sockets and open connections are untouched; a change of
  listen address needs a restart and is reported as such.

Worker: binds every TLS listener with SO_REUSEPORT (the kernel spreads connections over the
workers), runs aiohttp's HTTP/1.1 server with the proxy's protocol, and forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from certmgr.store import CertStore, StoreHolder
from proxy import metrics
from proxy.acme_runtime import HTTP01_PREFIX, http01_response
from proxy.config import Config, ListenAddress, load, parse_listen
from proxy.errors import ConfigError
from proxy.forward import Forwarder, make_session
from proxy.protocol import ProxyHTTPServer
from proxy.tasks import spawn
from proxy.tls import listener_context, set_acme_tls_hook

__all__ = ["Supervisor", "Worker", "install_uvloop", "run_worker_process"]

log = logging.getLogger("teeproxy.server")


def install_uvloop() -> bool:
    """Use uvloop's event loop policy when it is installed (it is by default)."""
    try:
        import uvloop  # noqa: PLC0415 - optional at runtime
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _on_hello(matched: bool) -> None:
    metrics.TLS_HELLOS.labels("matched" if matched else "unrecognized_name").inc()


@dataclass
class Worker:
    """One data-plane process (or, in tests, an in-process server on the running loop)."""

    cfg: Config
    store: CertStore
    reuse_port: bool = True
    holder: StoreHolder = field(init=False)
    ports: list[int] = field(default_factory=list)
    _servers: list[asyncio.base_events.Server] = field(default_factory=list)
    _redirect_runner: web.ServerRunner | None = None
    _tls_ctx: Any = None
    gate: Any = None  # proxy.governance.WorkerGate in [governance] enforce mode (issue 5)
    attestation: Any = None  # proxy.wellknown.AttestationEndpoint (issue 4)
    receipts: Any = None  # proxy.receipts.ReceiptIssuer (issue 6); None: receipts off

    def __post_init__(self) -> None:
        self.holder = StoreHolder(self.store)
        self.session: aiohttp.ClientSession | None = None
        self.forwarder: Forwarder | None = None
        self.http: ProxyHTTPServer | None = None

    async def start(self) -> None:
        cfg = self.cfg
        self.session = make_session(cfg)
        self.forwarder = Forwarder(cfg, self.session)
        self.forwarder.attestation = self.attestation
        self.forwarder.receipts = self.receipts
        handler = self.forwarder.handle
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
        if self.http is None:
            raise RuntimeError("listen() before start()")
        loop = asyncio.get_running_loop()
        for i, addr in enumerate(self.cfg.server.listen_addresses):
            srv = await loop.create_server(
                self.http,
                addr.host,
                self.ports[i] if i < len(self.ports) else addr.port,
                ssl=self._tls_ctx,
                ssl_handshake_timeout=self.cfg.tls.handshake_timeout,
                reuse_port=self.reuse_port,
                backlog=2048,
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
        async def redirect(request: web.BaseRequest) -> web.StreamResponse:
            if request.path.startswith(HTTP01_PREFIX):  # ACME HTTP-01 (RFC 8555 8.3)
                return await http01_response(self.cfg.state_dir, request.path)
            host = host_without_port(request.host or "")
            if not host:
                return web.Response(status=400, text="Host header required\n")
            port = cfg.server.listen_addresses[0].port
            netloc = host if port == 443 else f"{host}:{port}"
            raise web.HTTPPermanentRedirect(f"https://{netloc}{request.rel_url.raw_path_qs}")

        runner = self._redirect_runner = web.ServerRunner(web.Server(redirect, access_log=None))
        await runner.setup()
        for value in cfg.server.http_redirect_listen:
            addr = parse_listen(value, "server.http_redirect_listen")
            site = web.TCPSite(runner, addr.host, addr.port, reuse_port=self.reuse_port)
            await site.start()

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
        if self.session is not None:
            await self.session.close()
        if self.receipts is not None:
            await self.receipts.store.close()


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


# -- worker process -------------------------------------------------------------------------


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


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
    _setup_logging(cfg.logging.level)
    install_uvloop()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_worker_main(cfg, config_path, conn, receipt_store))


async def _worker_main(
    cfg: Config,
    config_path: str | None,
    conn: multiprocessing.connection.Connection,
    receipt_store: str = "",
) -> None:
    from proxy.certs import build_store, default_sealer  # noqa: PLC0415

    sealer = await asyncio.to_thread(default_sealer, cfg)
    store = await asyncio.to_thread(build_store, cfg, sealer)
    worker = Worker(cfg, store)
    from proxy.wellknown import make_endpoint  # noqa: PLC0415 - issue 4

    worker.attestation = await asyncio.to_thread(make_endpoint, cfg, worker.holder, sealer)
    if cfg.receipts.enabled:  # issue 6: signed responses
        from proxy.receipts import worker_issuer  # noqa: PLC0415

        worker.receipts = await worker_issuer(cfg, sealer, receipt_store)
    if cfg.governance.mode == "enforce":  # issue 5: serve only while the policy allows
        from proxy.governance import WorkerGate  # noqa: PLC0415

        worker.gate = WorkerGate(cfg)
    await worker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    async def reload(ack: bool = False) -> None:
        try:
            new_cfg = await asyncio.to_thread(load, config_path) if config_path else worker.cfg
            # Like the supervisor, apply only what a reload may change: [server] (the listen
            # ports it resolved, drain_grace), [admin] and state_dir need a restart.
            new_cfg = reloadable(worker.cfg, new_cfg)
            new_store = await asyncio.to_thread(build_store, new_cfg, sealer)
        except (ConfigError, OSError, ValueError) as e:
            log.error("reload failed, keeping the running config and certificates: %s", e)
            if ack:
                conn.send(("reload-failed", os.getpid()))
            return
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


def reloadable(running: Config, new: Config) -> Config:
    """The running config with the sections a SIGHUP reload applies taken from ``new``."""
    return running.replace(
        tls=new.tls,
        dev_ca=new.dev_ca,
        backend=new.backend,
        limits=new.limits,
        logging=new.logging,
    )


def check_certificates(cfg: Config, sealer: Any) -> None:
    """Build the certificate store once (blocking) so a bad certificate is a config error.

    Workers build their own store; this only checks that they will be able to.
    """
    from certmgr.errors import CertError  # noqa: PLC0415
    from proxy.certs import build_store  # noqa: PLC0415

    try:
        build_store(cfg, sealer)
    except (CertError, OSError) as e:
        raise ConfigError("tls.certificates", str(e)) from e


# -- supervisor -----------------------------------------------------------------------------


def _reserve(addr: ListenAddress) -> socket.socket:
    """Bind (without listening) to fail fast on a taken port and to fix port 0."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((addr.host, addr.port))
    except OSError as e:
        sock.close()
        raise ConfigError("server.listen", f"cannot bind {addr}: {e.strerror}") from e
    return sock


class Supervisor:
    """The control-plane process of ``teeproxy serve``."""

    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
        self._reserved: list[socket.socket] = []
        self._stopping = False
        self._configured_server = cfg.server  # as written, before ports are resolved
        self.ports: list[int] = []
        self._receipt_store: Any = None  # proxy.receipts.SharedStore with several workers

    def _resolve_ports(self) -> Config:
        listen: list[str] = []
        for addr in self.cfg.server.listen_addresses:
            sock = _reserve(addr)
            self._reserved.append(sock)
            port = sock.getsockname()[1]
            self.ports.append(port)
            listen.append(str(ListenAddress(host=addr.host, port=port)))
        # dataclasses.replace keeps every other [server] field, present and future.
        server = dataclasses.replace(self.cfg.server, listen=tuple(listen))
        return self.cfg.replace(server=server)

    def _spawn_worker(self) -> None:
        parent, child = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run_worker_process,
            args=(self.cfg, self.config_path, child, self._receipt_path),
            name="teeproxy-worker",
            daemon=False,
        )
        proc.start()
        child.close()
        self._workers.append((proc, parent))

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0
        for proc, conn in self._workers:
            while not conn.poll():
                if not proc.is_alive():
                    raise RuntimeError(f"worker {proc.pid} exited during start ({proc.exitcode})")
                if loop.time() > deadline:
                    raise TimeoutError("workers did not become ready")
                await asyncio.sleep(0.05)
            conn.recv()

    async def run(self) -> int:
        from proxy.admin import AdminServer  # noqa: PLC0415
        from proxy.certs import default_sealer, prepare_certificates  # noqa: PLC0415

        sealer = await asyncio.to_thread(default_sealer, self.cfg)
        from proxy.governance import GovernanceError, start_governor  # noqa: PLC0415

        try:  # issue 5: in enforce mode, no certificate and no listener before "allowed"
            self.governor = await start_governor(self.cfg)
        except GovernanceError as e:
            log.error("governance: %s", e)
            return 3
        await asyncio.to_thread(prepare_certificates, self.cfg, sealer)
        await asyncio.to_thread(check_certificates, self.cfg, sealer)
        self.cfg = self._resolve_ports()
        admin = AdminServer(self)
        await admin.start()
        # Signal handlers before the first worker exists: a SIGTERM or SIGHUP during start
        # must not kill the supervisor with its default action and orphan the workers.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self.reload(), "reload"))
        if self.cfg.receipts.enabled and self.cfg.server.worker_count > 1:
            # Issue 6: a receipt is fetched from whichever worker the kernel picks, so with
            # several workers the store lives here (proxy.receipts.SharedStore).
            from proxy.receipts import SharedStore  # noqa: PLC0415

            self._receipt_store = await SharedStore.start(self.cfg.receipts)
        for _ in range(self.cfg.server.worker_count):
            self._spawn_worker()
        try:
            await self._wait_ready()
        except (RuntimeError, TimeoutError) as e:
            log.error("start failed: %s", e)
            await self._terminate_workers()
            await admin.stop()
            await self._close_receipt_store()
            return 1
        log.info(
            "teeproxy serving on %s with %d workers (uvloop: %s)",
            ", ".join(self.cfg.server.listen),
            len(self._workers),
            "uvloop" in type(asyncio.get_running_loop()).__module__,
        )
        self.ready = True
        monitor = spawn(self._monitor(sealer), "supervisor-monitor")
        acme = None
        if self.cfg.acme.enabled:  # issue 3: certificates from an ACME CA
            from proxy.acme_runtime import AcmeManager  # noqa: PLC0415

            may_order = self.governor.may_request_certificates if self.governor else None
            manager = AcmeManager(self.cfg, sealer, self.reload_workers, may_order=may_order)
            acme = spawn(manager.run(), "acme")
        await stop.wait()
        self._stopping = True
        monitor.cancel()
        if acme is not None:
            acme.cancel()
        log.info("draining workers (grace %.0f s)", self.cfg.server.drain_grace)
        await self._terminate_workers()
        await admin.stop()
        await self._close_receipt_store()
        for sock in self._reserved:
            sock.close()
        if self.governor is not None:
            await self.governor.close()
        return 0

    ready = False
    governor: Any = None  # proxy.governance.Governor unless [governance] mode = "off"

    @property
    def _receipt_path(self) -> str:
        return self._receipt_store.path if self._receipt_store is not None else ""

    async def _close_receipt_store(self) -> None:
        if self._receipt_store is not None:
            await self._receipt_store.close()
            self._receipt_store = None

    async def reload(self) -> None:
        from proxy.certs import default_sealer, prepare_certificates  # noqa: PLC0415

        if self.config_path:
            sealer = await asyncio.to_thread(default_sealer, self.cfg)
            try:
                new_cfg = await asyncio.to_thread(load, self.config_path)
                candidate = reloadable(self.cfg, new_cfg)
                await asyncio.to_thread(prepare_certificates, candidate, sealer)
                # A config whose certificates cannot be served is refused here: accepted,
                # it would also be what restarted workers start with (and fail on).
                await asyncio.to_thread(check_certificates, candidate, sealer)
            except ConfigError as e:
                log.error("SIGHUP: config invalid, keeping the running one: %s", e)
                return
            if (
                new_cfg.server != self._configured_server
                or new_cfg.admin != self.cfg.admin
                or new_cfg.state_dir != self.cfg.state_dir
            ):
                log.warning("SIGHUP: [server], [admin] and state_dir take effect only on restart")
            self.cfg = candidate
        else:
            sealer = await asyncio.to_thread(default_sealer, self.cfg)
            await asyncio.to_thread(prepare_certificates, self.cfg, sealer)
        self._signal_workers(signal.SIGHUP)
        log.info("SIGHUP: reload sent to %d workers", len(self._workers))

    async def reload_workers(self) -> None:
        """SIGUSR1 every worker (a reload that is acknowledged over the worker's pipe) and
        wait until each reports its store rebuilt (or failed)."""
        from proxy.acme_runtime import wait_reloaded  # noqa: PLC0415

        conns = [conn for proc, conn in self._workers if proc.is_alive()]
        for conn in conns:  # drop reports of earlier reloads
            while conn.poll():
                conn.recv()
        self._signal_workers(signal.SIGUSR1)
        await asyncio.to_thread(wait_reloaded, conns, max(30.0, self.cfg.acme.request_timeout))

    def _signal_workers(self, sig: signal.Signals) -> None:
        for proc, _ in self._workers:
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)

    async def _monitor(self, sealer: Any) -> None:
        """Restart dead workers; renew the development certificate when due."""
        from proxy.certs import next_renewal, prepare_certificates  # noqa: PLC0415

        restarts: list[float] = []
        while True:
            await asyncio.sleep(0.5)
            for proc, conn in list(self._workers):
                if proc.is_alive() or self._stopping:
                    continue
                log.error("worker %s exited with %s: restarting", proc.pid, proc.exitcode)
                _mark_dead(proc.pid)
                conn.close()
                # By identity, not by index: with two dead workers in one pass, indices taken
                # before the first removal point at the wrong entry (or past the end).
                self._workers.remove((proc, conn))
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > 10:
                    log.critical("workers keep dying: backing off 10 s")
                    await asyncio.sleep(10)
                self._spawn_worker()
            try:
                due = await asyncio.to_thread(next_renewal, self.cfg, sealer)
                if due is not None and due.timestamp() <= time.time():
                    await asyncio.to_thread(prepare_certificates, self.cfg, sealer)
                    self._signal_workers(signal.SIGHUP)
                    log.info("development certificate renewed; workers reloading")
            except (OSError, ValueError) as e:
                # Logged and retried: an exception here must not end the worker supervision
                # this loop also does.
                log.error("development certificate renewal failed: %s", e)
                await asyncio.sleep(30)

    async def _terminate_workers(self) -> None:
        self._signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + self.cfg.server.drain_grace + 5
        for proc, conn in self._workers:
            while proc.is_alive() and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a process
                await asyncio.sleep(0.05)
            if proc.is_alive():
                log.error("worker %s did not stop in time: killing", proc.pid)
                proc.kill()
            proc.join(timeout=5)
            _mark_dead(proc.pid)
            conn.close()
        self._workers.clear()

    def worker_pids(self) -> list[int]:
        return [p.pid for p, _ in self._workers if p.pid is not None and p.is_alive()]


def _mark_dead(pid: int | None) -> None:
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import multiprocess  # noqa: PLC0415

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
