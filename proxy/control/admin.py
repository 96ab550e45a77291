"""The admin listener: liveness, readiness and Prometheus metrics, on loopback or a unix socket.

- ``GET /health``: 200 while the supervisor's event loop runs (liveness).
- ``GET /ready``: 200 only when every worker is alive, the backend accepts connections and
  every served certificate is within its validity window; otherwise 503 with the reasons.
- ``GET /metrics``: Prometheus text format, aggregated over the worker processes.

Nothing here is reachable from the TLS listeners, and config validation refuses a
non-loopback TCP address.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from cryptography import x509
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from proxy import metrics
from proxy.config import Config
from proxy.control.certificates import served_certificates
from proxy.errors import ConfigError
from proxy.log import admin_log as log

__all__ = [
    "AdminServer",
    "ClusterStatus",
    "PolicyStatus",
    "SupervisorView",
    "backend_reachable",
    "readiness",
]


class PolicyStatus(Protocol):
    """What ``/ready`` shows of governance (:class:`proxy.control.governance.Governor`)."""

    def status(self) -> dict[str, Any]: ...

    def ready_problem(self) -> str | None: ...


class SupervisorView(Protocol):
    """What the admin listener reads of the supervisor that runs it."""

    @property
    def cfg(self) -> Config: ...

    @property
    def ready(self) -> bool: ...

    @property
    def governor(self) -> PolicyStatus | None: ...

    def worker_pids(self) -> list[int]: ...

    @property
    def cluster(self) -> ClusterStatus | None: ...


class ClusterStatus(Protocol):
    """What ``/cluster`` shows (:class:`proxy.control.cluster.ClusterMember`)."""

    def status(self) -> dict[str, Any]: ...


async def backend_reachable(cfg: Config) -> str | None:
    """None when a connection to the backend opens; otherwise why not."""
    b = cfg.backend
    try:
        async with asyncio.timeout(b.connect_timeout):
            if b.unix_path:
                _, writer = await asyncio.open_unix_connection(b.unix_path)
            else:
                parts = urlsplit(b.url)
                _, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    except TimeoutError:
        return f"backend {b.url} connect timed out after {b.connect_timeout:g} s"
    except OSError as e:
        return f"backend {b.url} unreachable: {e.strerror or e}"
    writer.close()
    return None


async def readiness(
    cfg: Config, workers_alive: int, workers_expected: int
) -> tuple[bool, dict[str, Any]]:
    """The readiness verdict and its details (pure apart from the backend probe)."""
    reasons: list[str] = []
    if workers_alive < workers_expected:
        reasons.append(f"{workers_alive} of {workers_expected} workers alive")
    problem = await backend_reachable(cfg)
    if problem:
        reasons.append(problem)
    certs: list[dict[str, str]] = []
    try:
        served = await asyncio.to_thread(served_certificates, cfg)
    except (OSError, ValueError) as e:
        reasons.append(f"certificate unreadable: {e}")
        served = []
    now = dt.datetime.now(dt.UTC)
    _record_expiry(served)
    for source, cert in served:
        certs.append({"source": source, "not_after": cert.not_valid_after_utc.isoformat()})
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
            reasons.append(f"certificate {source} not valid now")
    body = {"ready": not reasons, "reasons": reasons, "certificates": certs}
    return not reasons, body


def _record_expiry(served: list[tuple[str, x509.Certificate]]) -> None:
    for source, cert in served:
        metrics.CERT_EXPIRY.labels(source).set(cert.not_valid_after_utc.timestamp())


async def refresh_certificate_metrics(cfg: Config) -> None:
    """Set the certificate expiry gauge from the served certificates (best effort)."""
    try:
        served = await asyncio.to_thread(served_certificates, cfg)
    except (OSError, ValueError) as e:
        log.warning("cannot read served certificates for metrics: %s", e)
        return
    _record_expiry(served)


class AdminServer:
    """Runs the admin app in the supervisor process."""

    def __init__(self, supervisor: SupervisorView) -> None:
        self.sup = supervisor
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/cluster", self._cluster)
        return app

    async def start(self) -> None:
        addr = self.sup.cfg.admin.address
        if addr is None:
            return
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site: web.BaseSite
        if addr.is_unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(addr.path)  # a stale socket from an earlier run
            site = web.UnixSite(self._runner, addr.path)
        else:
            site = web.TCPSite(self._runner, addr.host, addr.port)
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise ConfigError("admin.listen", f"cannot listen on {addr}: {e.strerror or e}") from e
        if addr.is_unix:
            os.chmod(addr.path, 0o600)
        log.info("admin listener on %s", addr)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "workers": len(self.sup.worker_pids())})

    async def _ready(self, _request: web.Request) -> web.Response:
        ok, body = await readiness(
            self.sup.cfg,
            len(self.sup.worker_pids()) if self.sup.ready else 0,
            self.sup.cfg.server.worker_count,
        )
        governor = self.sup.governor
        if governor is not None:  # on-chain policy state
            body["policy"] = governor.status()
            problem = governor.ready_problem()
            if problem:
                ok = False
                body["ready"] = False
                body["reasons"].append(problem)
        return web.json_response(body, status=200 if ok else 503)

    async def _cluster(self, _request: web.Request) -> web.Response:
        cluster = self.sup.cluster
        if cluster is None:
            return web.json_response({"enabled": False}, status=404)
        return web.json_response({"enabled": True, **cluster.status()})

    async def _metrics(self, _request: web.Request) -> web.Response:
        # The expiry gauge is the supervisor's: set it on every scrape, not only on /ready.
        await refresh_certificate_metrics(self.sup.cfg)
        data = await asyncio.to_thread(_collect)
        resp = web.Response(body=data)
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp


def _collect() -> bytes:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)
