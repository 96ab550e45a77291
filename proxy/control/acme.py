"""ACME in the supervisor: the renewal loop, and publishing challenge answers to workers.

:class:`AcmeManager` reuses a stored, still-valid certificate on start, otherwise orders
one; renews at the ARI window or two thirds of the lifetime; on failure keeps the current
certificate serving and retries with backoff (each retry logged with its time). A new
certificate is verified before it is stored (:func:`certmgr.acme.storage.verify_issued`)
and loaded by the workers on their next store build (they swap the whole immutable store).
Blocking ACME and DNS work runs in a thread. The workers' half (answering challenges,
serving the certificate) is :mod:`proxy.dataplane.acme`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import importlib
import random
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from certmgr.acme.challenges import http01, tlsalpn01
from certmgr.acme.renewal import in_emergency, next_attempt, renewal_time, retry_delay
from certmgr.acme.storage import AcmeStore
from certmgr.errors import AcmeError, SettingsError
from certmgr.keys import Sealer, generate_p256
from proxy.config import Config
from proxy.log import acme_log as log

if TYPE_CHECKING:
    from certmgr.acme.client import AcmeIssuer

__all__ = ["AcmeManager", "RenewCoordinator", "StateDirPublisher", "wait_reloaded"]


class RenewCoordinator(Protocol):
    """Who may order when several replicas share one certificate (cluster mode:
    :class:`proxy.control.cluster.ClusterMember`)."""

    async def before_order(self) -> bool:
        """True: order now (this replica holds the renew lock). False: skip this time."""

    async def after_order(self) -> bool:
        """Publish the certificate just stored (fenced by the lock); True when published."""

    async def release(self) -> None:
        """Give the renew lock back (success or not)."""


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
        coordinator: RenewCoordinator | None = None,
    ) -> None:
        """``may_order``: governance's verdict (enforce mode: only an allowed build orders);
        ``coordinator``: the cluster's renew lock (None: this replica alone decides)."""
        self.cfg = cfg
        self._may_order = may_order
        self._coordinator = coordinator
        self._window: tuple[dt.datetime, dt.datetime] | None = None
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
            # The acme library (and requests) load many files: step() imported them in a
            # thread first, so these imports are dictionary lookups.
            from certmgr.acme.caa import caa_checker  # noqa: PLC0415 - see above
            from certmgr.acme.client import AcmeIssuer  # noqa: PLC0415 - see above

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

        stored = AcmeStore(self.cfg.state_dir, self.sealer).load_usable(
            self.cfg.acme.names, self._clock()
        )
        if stored is None:
            return None
        leaf = stored.leaf
        return leaf.not_valid_before_utc, leaf.not_valid_after_utc

    async def _compute_due(self, window: tuple[dt.datetime, dt.datetime]) -> dt.datetime:
        from certmgr.acme.client import ari_window_or_none  # noqa: PLC0415 - see issuer()

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

        now = self._clock()
        window = await asyncio.to_thread(self._current_window)
        if window != self._window:  # a new certificate (ours, or the fleet's): new timing
            self._window, self.due = window, None
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
            # docs/GOVERNANCE.md: a build the policy does not allow requests no certificate.
            log.warning(
                "ACME: not ordering (%s): governance does not allow this build", decision.reason
            )
            return now + dt.timedelta(seconds=min(60.0, self.cfg.acme.check_interval))
        coordinator = self._coordinator
        if coordinator is not None and not await coordinator.before_order():
            # Another replica renews (or just did: its certificate is installed by now).
            return now + dt.timedelta(seconds=min(self.cfg.cluster.resync_interval, 5.0))
        log.info("ACME: ordering a certificate (%s)", decision.reason)
        try:
            return await self._order(now, window)
        finally:
            if coordinator is not None:
                await coordinator.release()

    async def _order(
        self, now: dt.datetime, window: tuple[dt.datetime, dt.datetime] | None
    ) -> dt.datetime:
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
        if self._coordinator is not None:
            await self._coordinator.after_order()
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


def wait_reloaded(conns: list[Any], timeout: float) -> None:
    """Block until every worker pipe reported a reload (blocking: run in a thread)."""
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
