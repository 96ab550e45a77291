"""ACME in the running server: the supervisor's renewal loop and the workers' answers.

Control plane (:class:`AcmeManager`, in the supervisor): reuses a stored, still-valid
certificate on start, otherwise orders one; renews at the ARI window or two thirds of the
lifetime; on failure keeps the current certificate serving and retries with backoff (each
retry logged with its time). A new certificate is verified before it is stored
(:func:`certmgr.acme_store.verify_issued`) and loaded by the workers on their next store
build (they swap the whole immutable store). Blocking ACME and DNS work runs in a thread.

Data plane (workers): :func:`http01_response` answers HTTP-01 on the plain-HTTP listener;
:func:`acme_store_parts` puts the ACME certificate and any pending TLS-ALPN-01 challenge
certificate into the store a worker builds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import importlib
import json
import logging
import random
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from certmgr.acme.challenges import http01
from certmgr.errors import CertError, SettingsError
from certmgr.keys import Sealer
from certmgr.store import CertEntry, entry_from_key
from proxy.config import Config

if TYPE_CHECKING:
    from certmgr.acme.client import AcmeIssuer

__all__ = [
    "HTTP01_PREFIX",
    "AcmeManager",
    "StateDirPublisher",
    "acme_evidence_response",
    "acme_store_parts",
    "http01_response",
]

log = logging.getLogger("teeproxy.acme")

HTTP01_PREFIX = http01.PATH_PREFIX
EVIDENCE_PATH = "/.well-known/tee/acme"


# -- data plane -----------------------------------------------------------------------------


async def http01_response(state_dir: str, path: str) -> web.Response:
    """The key authorization for ``/.well-known/acme-challenge/TOKEN``, or 404."""
    token = path[len(HTTP01_PREFIX) :]
    data = await asyncio.to_thread(http01.lookup, state_dir, token)
    if data is None:
        return web.Response(status=404, text="no such challenge\n")
    return web.Response(body=data, content_type="application/octet-stream")


def acme_store_parts(
    cfg: Config,
    sealer: Sealer,
    factory: Callable[[], ssl.SSLContext],
    now: dt.datetime | None = None,
) -> tuple[list[CertEntry], dict[str, ssl.SSLContext]]:
    """Worker step (blocking): the stored ACME certificate, if usable, and challenge contexts.

    An expired, mismatched or name-missing certificate is not returned, so never served.
    """
    if not cfg.acme.enabled:
        return [], {}
    from certmgr.acme.challenges import tlsalpn01  # noqa: PLC0415
    from certmgr.acme.storage import AcmeStore  # noqa: PLC0415

    now = now or dt.datetime.now(dt.UTC)
    entries: list[CertEntry] = []
    stored = AcmeStore(cfg.state_dir, sealer).load_usable(cfg.acme.names, now)
    if stored is not None:
        entries.append(entry_from_key(stored.chain_pem, stored.key, factory, source="acme"))
    challenges: dict[str, ssl.SSLContext] = {}
    for ch in tlsalpn01.load_published(cfg.state_dir, sealer):
        try:
            entry = entry_from_key(ch.cert_pem, ch.key, _alpn_factory(factory), source="acme-tls/1")
        except CertError as e:
            log.warning("tls-alpn-01 challenge certificate for %s not usable: %s", ch.name, e)
            continue
        challenges[ch.name] = entry.context
    return entries, challenges


def _alpn_factory(factory: Callable[[], ssl.SSLContext]) -> Callable[[], ssl.SSLContext]:
    from certmgr.acme.challenges.tlsalpn01 import ALPN_ACME_TLS  # noqa: PLC0415

    def make() -> ssl.SSLContext:
        ctx = factory()
        ctx.set_alpn_protocols([ALPN_ACME_TLS])  # RFC 8737 3: the only protocol offered
        return ctx

    return make


def read_evidence(state_dir: str) -> bytes:
    """The evidence document (blocking): account URI and every certificate key's SPKI hash."""
    from certmgr.acme.storage import AcmeStore  # noqa: PLC0415
    from certmgr.keys import InsecureDevSealer  # noqa: PLC0415

    ev = AcmeStore(state_dir, InsecureDevSealer()).evidence()  # reads public JSON only
    raw = ev.get("keys")
    keys = [k for k in raw if isinstance(k, str)] if isinstance(raw, list) else []
    doc = {
        "account_uri": ev.get("account_uri"),
        "certificate_keys": [{"spki_sha256": k} for k in keys],
        "format": "teeproxy-acme-evidence/1",
    }
    return json.dumps(doc, sort_keys=True).encode()


async def acme_evidence_response(cfg: Config) -> web.Response:
    """``GET /.well-known/tee/acme`` (JSON): for comparing Certificate Transparency logs."""
    if not (cfg.acme.enabled and cfg.acme.evidence_endpoint):
        return web.Response(status=404, text="ACME is not configured\n")
    body = await asyncio.to_thread(read_evidence, cfg.state_dir)
    return web.Response(body=body, content_type="application/json")


# -- control plane --------------------------------------------------------------------------


class StateDirPublisher:
    """Publishes HTTP-01/TLS-ALPN-01 answers in the state dir; ``reload`` makes workers load.

    Called from the ACME thread: ``reload`` is run on the event loop and waited for.
    """

    def __init__(
        self,
        state_dir: str,
        sealer: Sealer,
        reload: Callable[[], Coroutine[Any, Any, None]],
        loop: asyncio.AbstractEventLoop,
        timeout: float,
    ) -> None:
        self.state_dir = state_dir
        self.sealer = sealer
        self._reload = reload
        self._loop = loop
        self._timeout = timeout
        self._tokens: list[str] = []
        self._alpn: list[str] = []

    def publish_http01(self, token: str, key_authorization: str) -> None:
        http01.publish(self.state_dir, token, key_authorization)
        self._tokens.append(token)

    def publish_tlsalpn01(self, name: str, key_authorization: str) -> None:
        from certmgr.acme.challenges import tlsalpn01  # noqa: PLC0415
        from certmgr.keys import generate_p256  # noqa: PLC0415

        tlsalpn01.publish(self.state_dir, name, key_authorization, self.sealer, generate_p256())
        self._alpn.append(name)

    def _run_reload(self) -> None:
        fut: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            self._reload(), self._loop
        )
        fut.result(self._timeout)

    def commit(self) -> None:
        if self._alpn:  # HTTP-01 answers are read per request: no reload needed
            self._run_reload()

    def cleanup(self) -> None:
        from certmgr.acme.challenges import tlsalpn01  # noqa: PLC0415

        for token in self._tokens:
            http01.remove(self.state_dir, token)
        had_alpn = bool(self._alpn)
        for name in self._alpn:
            tlsalpn01.remove(self.state_dir, name)
        self._tokens.clear()
        self._alpn.clear()
        if had_alpn:
            self._run_reload()


class AcmeManager:
    """The supervisor's ACME loop: obtain, reuse, renew, retry; ``reload`` swaps stores."""

    def __init__(
        self,
        cfg: Config,
        sealer: Sealer,
        reload: Callable[[], Coroutine[Any, Any, None]],
        *,
        clock: Callable[[], dt.datetime] | None = None,
        rng: random.Random | None = None,
        may_order: Callable[[], bool] | None = None,
    ) -> None:
        """``may_order``: governance's verdict (enforce mode: only an allowed build orders)."""
        self.cfg = cfg
        self._may_order = may_order
        self.sealer = sealer
        self._reload = reload
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self.failures = 0
        self.retry_at: dt.datetime | None = None
        self.due: dt.datetime | None = None
        self.issued_count = 0
        self._recheck_at = self._clock()
        self.last_error: str | None = None
        self._issuer: AcmeIssuer | None = None
        self.wakeup = asyncio.Event()

    def issuer(self) -> AcmeIssuer:
        if self._issuer is None:
            from certmgr.acme.caa import caa_checker  # noqa: PLC0415
            from certmgr.acme.client import AcmeIssuer  # noqa: PLC0415

            publisher = StateDirPublisher(
                self.cfg.state_dir,
                self.sealer,
                self._reload,
                asyncio.get_running_loop(),
                timeout=max(30.0, self.cfg.acme.request_timeout),
            )
            self._issuer = AcmeIssuer(
                self.cfg.acme,
                self.cfg.state_dir,
                self.sealer,
                publisher,
                caa_check=caa_checker(self.cfg.acme) if self.cfg.acme.caa_check else None,
            )
        return self._issuer

    def _current_window(self) -> tuple[dt.datetime, dt.datetime] | None:
        from certmgr.acme.storage import AcmeStore  # noqa: PLC0415

        stored = AcmeStore(self.cfg.state_dir, self.sealer).load_usable(
            self.cfg.acme.names, self._clock()
        )
        if stored is None:
            return None
        leaf = stored.leaf
        return leaf.not_valid_before_utc, leaf.not_valid_after_utc

    async def _compute_due(self, window: tuple[dt.datetime, dt.datetime]) -> dt.datetime:
        from certmgr.acme.client import ari_window_or_none  # noqa: PLC0415
        from certmgr.acme.renewal import renewal_time  # noqa: PLC0415
        from certmgr.acme.storage import AcmeStore  # noqa: PLC0415

        ari: tuple[dt.datetime, dt.datetime] | None = None
        pem = await asyncio.to_thread(AcmeStore(self.cfg.state_dir, self.sealer).cert_pem)
        if pem is not None:  # ARI is advisory: any failure falls back to 2/3 of the lifetime
            ari = await asyncio.to_thread(ari_window_or_none, self.issuer(), pem)
        return renewal_time(window[0], window[1], ari, self._rng.random())

    async def step(self) -> dt.datetime:
        """One pass of the loop; returns when to wake next."""
        # First use imports the acme library (reads many files): off the event loop.
        for mod in ("certmgr.acme.client", "certmgr.acme.caa"):
            await asyncio.to_thread(importlib.import_module, mod)
        from certmgr.acme.renewal import in_emergency, next_attempt, retry_delay  # noqa: PLC0415
        from certmgr.errors import AcmeError  # noqa: PLC0415

        now = self._clock()
        window = await asyncio.to_thread(self._current_window)
        if window is not None and (self.due is None or now >= self._recheck_at):
            # RFC 9773 4.3: poll the renewal info again from time to time (the CA may move
            # the window, e.g. ahead of a revocation); without ARI this is 2/3 of the life.
            previous, self.due = self.due, await self._compute_due(window)
            self._recheck_at = now + dt.timedelta(seconds=self.cfg.acme.check_interval)
            if self.due != previous:
                log.info("ACME certificate valid until %s; renewal at %s", window[1], self.due)
        decision = next_attempt(
            now=now,
            cert_window=window,
            due=self.due,
            failures=self.failures,
            retry_at=self.retry_at,
            check_interval=self.cfg.acme.check_interval,
        )
        if not decision.renew:
            return decision.at
        if self._may_order is not None and not self._may_order():
            # Issue 5: a build the policy does not allow requests no certificate.
            log.warning(
                "ACME: not ordering (%s): governance does not allow this build", decision.reason
            )
            return now + dt.timedelta(seconds=min(60.0, self.cfg.acme.check_interval))
        log.info("ACME: ordering a certificate (%s)", decision.reason)
        a = self.cfg.acme
        try:
            await asyncio.to_thread(self.issuer().obtain, self._clock)
        except (AcmeError, OSError, ValueError) as e:
            # The library names its own setting; the operator knows it as acme.<field>.
            self.last_error = f"acme.{e}" if isinstance(e, SettingsError) else str(e)
            retry_after = e.retry_after if isinstance(e, AcmeError) else None
            emergency = window is None or in_emergency(
                window[0], window[1], now, a.emergency_fraction
            )
            delay = retry_delay(
                self.failures,
                base=a.retry_base,
                cap=a.retry_max,
                rand=self._rng.random(),
                now=now,
                retry_after=retry_after,
                emergency=emergency,
            )
            self.failures += 1
            self.retry_at = now + dt.timedelta(seconds=delay)
            log.error(
                "ACME order failed (attempt %d; %s): %s; next attempt at %s (in %.0f s)",
                self.failures,
                "current certificate keeps serving until " + window[1].isoformat()
                if window
                else "no ACME certificate yet",
                e,
                self.retry_at.isoformat(),
                delay,
            )
            return self.retry_at
        self.failures = 0
        self.retry_at = None
        self.due = None
        self.last_error = None
        self.issued_count += 1
        await self._reload()
        return self._clock()

    async def run(self) -> None:
        """Forever: step, then sleep until the next decision (or a wakeup)."""
        while True:
            try:
                at = await self.step()
            except (OSError, ValueError, RuntimeError) as e:
                # Outside the order itself (storage, a worker reload): keep the loop alive.
                at = self._clock() + dt.timedelta(seconds=self.cfg.acme.retry_base)
                log.error("ACME loop step failed: %s; next attempt at %s", e, at.isoformat())
            delay = max(0.0, (at - self._clock()).total_seconds())
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout=delay)


def state_file(state_dir: str, *parts: str) -> Path:
    return Path(state_dir, "acme", *parts)


def wait_reloaded(conns: list[Any], timeout: float) -> None:
    """Block until every worker pipe reported a reload (blocking: run in a thread)."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    for conn in conns:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not conn.poll(remaining):
            log.warning("a worker did not report its reload within %.0f s", timeout)
            return
        try:
            msg = conn.recv()
        except (EOFError, OSError) as e:
            log.warning("worker pipe closed while waiting for a reload: %s", e)
            continue
        if msg[0] != "reloaded":
            log.warning("worker %s: reload failed (see its log)", msg[1])
