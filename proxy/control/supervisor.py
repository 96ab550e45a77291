"""The supervisor process of ``teeproxy serve``: the control plane.

It validates the config, builds the process's runtime (:mod:`proxy.runtime`), starts
governance, prepares certificates, reserves the listen ports, starts N worker processes
(:mod:`proxy.dataplane.worker`), serves the admin endpoints, runs the ACME loop and the
receipt store, renews the development and RA-TLS certificates, restarts a worker that
dies, and relays signals:

- SIGTERM / SIGINT: every worker stops accepting, lets in-flight requests and streams finish
  for up to ``server.drain_grace`` seconds, then closes; the supervisor exits when all have.
- SIGHUP: the config file is read and validated again (an invalid file is logged and
  ignored), certificates are prepared again, and each worker swaps in the new certificate
  store and settings. Listening sockets and open connections are untouched; a change of
  listen address needs a restart and is reported as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
import types
from collections.abc import Iterator
from multiprocessing.process import BaseProcess

from prometheus_client import multiprocess

from certmgr.errors import ClusterError, EtcdError
from certmgr.receipts.signing import SigningKey
from proxy.config import Config, ListenAddress, load, reloadable
from proxy.control.acme import AcmeManager, wait_reloaded
from proxy.control.admin import AdminServer
from proxy.control.certificates import check_certificates, next_renewal, prepare_certificates
from proxy.control.cluster import ClusterMember
from proxy.control.governance import Governor, start_governor
from proxy.control.receipt_store import SharedStore
from proxy.dataplane import allocator
from proxy.dataplane.worker import run_worker_process
from proxy.errors import ConfigError, GovernanceError
from proxy.log import server_log as log
from proxy.runtime import Runtime, build_runtime
from proxy.tasks import spawn

__all__ = ["Supervisor", "advertised_url"]


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


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """While a worker is spawned, hide this process's ``__main__`` from multiprocessing.

    A 'spawn' child first runs the parent's main module again (as ``__mp_main__``): for
    ``teeproxy serve`` that is the console script, which imports :mod:`proxy.cli.main` and
    with it every command (the quote verifier, the Ethereum stack, ...): about 70 MB per
    worker instead of what :mod:`proxy.dataplane.worker` needs. The worker's entry point is
    imported by name, so the child needs nothing from ``__main__``: a bare module without
    ``__file__`` or ``__spec__`` makes multiprocessing leave it alone. Synchronous, around
    ``Process.start()`` only (nothing else reads ``__main__`` meanwhile).
    """
    main = sys.modules["__main__"]
    bare = types.ModuleType("__main__")
    bare.__spec__ = None
    sys.modules["__main__"] = bare
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def advertised_url(cfg: Config) -> str:
    """Where operators reach this replica over HTTPS: ``[cluster] advertise_url``, else the
    first listen address once its port is resolved ("" for a wildcard address)."""
    if cfg.cluster.advertise_url:
        return cfg.cluster.advertise_url
    addr = cfg.server.listen_addresses[0]
    if addr.host in ("0.0.0.0", "::", ""):
        return ""
    host = f"[{addr.host}]" if ":" in addr.host else addr.host
    return f"https://{host}:{addr.port}"


class Supervisor:
    """The control-plane process of ``teeproxy serve``."""

    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[tuple[BaseProcess, multiprocessing.connection.Connection]] = []
        self._reserved: list[socket.socket] = []
        self._stopping = False
        self._configured_server = cfg.server  # as written, before ports are resolved
        self.ports: list[int] = []
        self._receipt_store: SharedStore | None = None  # with several workers

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
        malloc = allocator.worker_environment(self.cfg.limits.retain_free_memory)
        # The worker loads only what it uses (see _bare_main); its allocator keeps freed
        # body buffers for reuse (proxy.dataplane.allocator).
        with _bare_main(), allocator.in_environment(malloc):
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
        runtime = self.runtime = await asyncio.to_thread(build_runtime, self.cfg, prepare=True)
        if runtime.measurement_id is not None:
            log.info("this TEE's measurement id: 0x%s", runtime.measurement_id.hex())
        try:  # in enforce mode, no certificate and no listener before "allowed"
            self.governor = await start_governor(self.cfg, runtime)
        except GovernanceError as e:
            log.error("governance: %s", e)
            return 3
        if self.cfg.cluster.enabled and self.governor is not None:
            # Before any certificate is prepared: the fleet's certificate is installed first.
            self.cluster = ClusterMember(self.cfg, runtime, self.governor)
            try:
                await self.cluster.start()
            except (ClusterError, EtcdError) as e:
                log.error("cluster: %s", e)
                await self.cluster.close()
                await self.governor.close()
                return 3
            if self.cluster.signer is not None:  # the fleet's receipt key, before the RA-TLS cert
                runtime = self.runtime = dataclasses.replace(
                    runtime, signing_key=self.cluster.signer.key
                )
        await asyncio.to_thread(prepare_certificates, self.cfg, runtime)
        await asyncio.to_thread(check_certificates, self.cfg, runtime.sealer)
        self.cfg = self._resolve_ports()
        if self.cluster is not None:
            await self.cluster.advertise(advertised_url(self.cfg))
        admin = AdminServer(self)
        await admin.start()
        # Signal handlers before the first worker exists: a SIGTERM or SIGHUP during start
        # must not kill the supervisor with its default action and orphan the workers.
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: spawn(self.reload(), "reload"))
        if self.cfg.receipts.enabled and (self.cfg.server.worker_count > 1 or self.cluster):
            # A receipt is fetched from whichever worker the kernel picks, so with several
            # workers the store lives here; in a cluster, sealed in etcd too (any replica).
            self._receipt_store = await SharedStore.start(self.cfg.receipts, self.cluster)
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
        monitor = spawn(self._monitor(), "supervisor-monitor")
        acme = None
        manager = None
        if self.cfg.acme.enabled:  # certificates from an ACME CA
            may_order = self.governor.may_request_certificates if self.governor else None
            manager = AcmeManager(
                self.cfg,
                runtime.sealer,
                self.reload_workers,
                may_order=may_order,
                coordinator=self.cluster,
            )
            acme = spawn(manager.run(), "acme")
        if self.cluster is not None:
            self.cluster.reload = self.reload_workers
            self.cluster.on_signer = self._install_signer
            self.cluster.acme_wakeup = manager.wakeup if manager is not None else None
            self.cluster.run()
        await stop.wait()
        self._stopping = True
        monitor.cancel()
        if acme is not None:
            acme.cancel()
        if self.cluster is not None:  # leave the cluster first: the lease goes at once
            await self.cluster.close()
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
    governor: Governor | None = None  # unless [governance] mode = "off"
    cluster: ClusterMember | None = None  # with [cluster] enabled
    runtime: Runtime | None = None  # built at the start of run()

    @property
    def _receipt_path(self) -> str:
        return self._receipt_store.path if self._receipt_store is not None else ""

    async def _close_receipt_store(self) -> None:
        if self._receipt_store is not None:
            await self._receipt_store.close()
            self._receipt_store = None

    async def reload(self) -> None:
        runtime = self.runtime
        if runtime is None:
            log.warning("SIGHUP before start-up finished: ignored")
            return
        if self.config_path:
            try:
                new_cfg = await asyncio.to_thread(load, self.config_path)
                candidate = reloadable(self.cfg, new_cfg)
                await asyncio.to_thread(prepare_certificates, candidate, runtime)
                # A config whose certificates cannot be served is refused here: accepted,
                # it would also be what restarted workers start with (and fail on).
                await asyncio.to_thread(check_certificates, candidate, runtime.sealer)
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
            await asyncio.to_thread(prepare_certificates, self.cfg, runtime)
        self._signal_workers(signal.SIGHUP)
        log.info("SIGHUP: reload sent to %d workers", len(self._workers))

    async def _install_signer(self, key: SigningKey) -> None:
        """The fleet's receipt signer changed (cluster mode): a new RA-TLS certificate naming
        it, then the workers reload (certificate store and key in one step, so a handshake
        and the evidence after it name the same address; in-flight requests finish)."""
        runtime = self.runtime
        if runtime is None:
            return
        runtime = self.runtime = dataclasses.replace(runtime, signing_key=key)
        try:
            await asyncio.to_thread(prepare_certificates, self.cfg, runtime)
        except ConfigError as e:
            log.error(
                "RA-TLS certificate naming the new receipt signer failed; the current one "
                "names the old signer until its next renewal: %s",
                e,
            )
        await self.reload_workers()
        log.info("workers sign receipts with %s", key.address_hex)

    async def reload_workers(self) -> None:
        """SIGUSR1 every worker (a reload that is acknowledged over the worker's pipe) and
        wait until each reports its store rebuilt (or failed)."""
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

    async def _monitor(self) -> None:
        """Restart dead workers; renew the development and RA-TLS certificates when due."""
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
                due = await asyncio.to_thread(next_renewal, self.cfg)
                runtime = self.runtime
                if runtime is not None and due is not None and due.timestamp() <= time.time():
                    await asyncio.to_thread(prepare_certificates, self.cfg, runtime)
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
    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
