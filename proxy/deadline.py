"""A reschedulable deadline for one task: cheap enough to move on every chunk.

``asyncio.timeout()`` allocates a context manager and a timer handle on every entry (about
9 us each here). A streaming relay would enter one per chunk read and one per chunk written.
:class:`Deadline` instead keeps one timer per exchange and moves it by storing a float. When
the timer fires early (the deadline moved later), it re-arms itself for the new time, as
aiohttp's keep-alive timer does. When the deadline has really passed, it cancels the task
the way ``asyncio.timeout`` does, and :meth:`expired_by` tells the caller that the
cancellation was its own and not, for example, a client disconnect.

A ``cap`` (absolute loop time) bounds every phase: the total-time limit of an exchange.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["Deadline"]


class Deadline:
    """One deadline at a time for the current task, labelled with the phase it guards."""

    __slots__ = ("_handle", "_loop", "_scheduled", "_task", "_when", "cap", "expired", "phase")

    def __init__(
        self, cap_seconds: float | None = None, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        # ``loop``: the running loop, when the caller knows it already. asyncio checks the
        # running loop's process with getpid() on every lookup of it, and current_task()
        # without a loop looks it up too: two system calls, 1.5 % of a worker's CPU per
        # small request (bench (a), py-spy --native). With the loop given, none.
        self._loop = loop = asyncio.get_running_loop() if loop is None else loop
        task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("Deadline needs a running task")
        self._task = task
        self._when = math.inf
        self._scheduled = math.inf
        self._handle: asyncio.TimerHandle | None = None
        self.cap = self._loop.time() + cap_seconds if cap_seconds else math.inf
        self.phase = ""
        self.expired = False

    def set(self, seconds: float, phase: str) -> None:
        """From now on, cancel the task if ``seconds`` pass (or the cap is reached) first."""
        when = self._loop.time() + seconds
        if when >= self.cap:
            when, phase = self.cap, "total"
        self._when = when
        self.phase = phase
        if when < self._scheduled:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
            self._scheduled = when

    def clear(self) -> None:
        """Stop guarding; the timer lapses harmlessly the next time it fires."""
        self._when = math.inf

    def close(self) -> None:
        """Release the timer (call when the exchange ends)."""
        self._when = math.inf
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._scheduled = math.inf

    def _fire(self) -> None:
        self._handle = None
        self._scheduled = math.inf
        if self._when == math.inf:
            return
        if self._loop.time() < self._when:
            self._handle = self._loop.call_at(self._when, self._fire)
            self._scheduled = self._when
            return
        self.expired = True
        self._task.cancel()

    def expired_by(self) -> bool:
        """In ``except CancelledError``: True if this deadline caused it (and is absorbed).

        Mirrors ``asyncio.timeout``: the task's cancellation is undone only when no other
        cancellation (a client disconnect, a shutdown) is pending at the same time.
        """
        if not self.expired:
            return False
        self.expired = False
        return self._task.uncancel() == 0
