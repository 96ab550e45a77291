"""The governance gate in each worker: serve only while the published state allows it.

:class:`WorkerGate` polls ``STATE_DIR/governance/state.json`` (:mod:`proxy.gatestate`; a
stat, every ``min(1 s, refresh_period / 4)``) and, when serving is no longer allowed,
closes the listening sockets (no new connections), answers requests already in flight
with 503 and the reason (or cuts a response that already started: a truncated body must
not look complete), and answers 503 on kept-alive connections. A revocation therefore
takes effect within one refresh period plus one poll, i.e. within two refresh periods. A
file that stops being renewed (supervisor gone) is itself a reason to stop.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Protocol

from aiohttp import web

from proxy import metrics
from proxy.config import Config
from proxy.dataplane.endpoints import Handler
from proxy.dataplane.responses import json_error
from proxy.gatestate import MAX_STATE_FILE, GateState, state_path
from proxy.log import policy_log as log
from proxy.tasks import spawn

__all__ = ["Listening", "WorkerGate"]

_NOT_READ = "governance state not read yet"


class Listening(Protocol):
    """What the gate needs from a worker: close and reopen its TLS listeners."""

    def stop_listening(self) -> None: ...

    async def listen(self) -> None: ...


class WorkerGate:
    """Applies the published governance state in one worker."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.g = cfg.governance
        self.path = state_path(cfg)
        self.blocked: str | None = _NOT_READ
        self._inflight: dict[asyncio.Task[Any], web.BaseRequest] = {}
        self._cancelled: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_config(cls, cfg: Config) -> WorkerGate | None:
        return cls(cfg) if cfg.governance.mode == "enforce" else None

    @property
    def poll_interval(self) -> float:
        return min(1.0, self.g.refresh_period / 4)

    def read(self, now: float) -> str | None:
        """Blocked reason from the state file, or None when serving is allowed (blocking I/O)."""
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_STATE_FILE + 1)
            state = GateState.from_json(data)
        except FileNotFoundError:
            return "no governance state published"
        except (OSError, ValueError, TypeError) as e:
            log.error("governance state %s unreadable: %s", self.path, e)
            return "governance state unreadable"
        # A state the supervisor stopped renewing is no state: fail closed.
        if now - state.written_at > self.g.max_staleness + 2 * self.g.refresh_period:
            return "governance state not renewed (supervisor stopped reading the policy)"
        return None if state.serving else state.reason

    def set_blocked(self, reason: str | None) -> bool:
        """Apply a new verdict; True when it changed. Cancels in-flight requests on a block."""
        if reason == self.blocked:
            return False
        was = self.blocked
        self.blocked = reason
        if reason is not None:
            log.warning("worker %d stops serving: %s", os.getpid(), reason)
            for task in list(self._inflight):
                self._cancelled.add(task)
                task.cancel()
        elif was is not _NOT_READ:
            log.info("worker %d serving again (policy allows this build)", os.getpid())
        return True

    def wrap(self, handler: Handler) -> Handler:
        """The forwarder's handler behind the gate."""

        async def gated(request: web.BaseRequest) -> web.StreamResponse:
            if self.blocked is not None:
                return self._deny(self.blocked)
            task = asyncio.current_task()
            if task is None:  # aiohttp always runs handlers in a task
                return await handler(request)
            self._inflight[task] = request
            try:
                return await handler(request)
            except asyncio.CancelledError:
                reason = self._reason()  # re-read: set_blocked() ran while we awaited
                if task not in self._cancelled or reason is None:
                    raise
                task.uncancel()
                writer = request.writer
                if getattr(writer, "output_size", 1) == 0:
                    return self._deny(reason)
                # The response already started: only a cut connection is honest.
                if request.transport is not None:
                    request.transport.abort()
                raise
            finally:
                self._inflight.pop(task, None)
                self._cancelled.discard(task)

        return gated

    def _reason(self) -> str | None:
        return self.blocked

    def _deny(self, reason: str) -> web.StreamResponse:
        metrics.status_counter(503).inc()
        return json_error(
            503,
            "policy_denied",
            f"this server may not serve: {reason}",
            close=True,
            headers={"Retry-After": str(int(self.g.refresh_period) + 1)},
        )

    async def initial(self) -> bool:
        """Read the state before the worker listens; True when it may listen."""
        self.set_blocked(await asyncio.to_thread(self.read, time.time()))
        return self.blocked is None

    def attach(self, worker: Listening) -> None:
        """Start polling for ``worker`` (a named background task, stopped by close())."""
        self._task = spawn(self.run(worker), "governance-gate")

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def run(self, worker: Listening) -> None:
        """Poll the state file and open / close the worker's listeners accordingly."""
        listening = self.blocked is None
        while True:
            await asyncio.sleep(self.poll_interval)
            reason = await asyncio.to_thread(self.read, time.time())
            self.set_blocked(reason)
            if reason is not None and listening:
                worker.stop_listening()
                listening = False
            elif reason is None and not listening:
                try:
                    await worker.listen()
                    listening = True
                except OSError as e:
                    log.error("cannot reopen the listeners: %s", e)
