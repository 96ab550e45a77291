"""The one place background tasks are created: named, referenced until done, failures logged.

``asyncio.create_task`` is banned elsewhere (ruff banned-api): a task nobody holds can be
garbage-collected mid-flight, and an exception nobody awaits vanishes silently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from proxy.log import tasks_log as log

__all__ = ["cancel_all", "spawn"]

T = TypeVar("T")
_tasks: set[asyncio.Task[Any]] = set()


def _done(task: asyncio.Task[Any]) -> None:
    _tasks.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background task %s failed", task.get_name(), exc_info=exc)


def spawn(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a named task that is kept alive and whose failure is logged."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _tasks.add(task)
    task.add_done_callback(_done)
    return task


async def cancel_all(prefix: str = "") -> None:
    """Cancel the background tasks whose name starts with ``prefix`` and wait for them."""
    victims = [t for t in _tasks if t.get_name().startswith(prefix)]
    for t in victims:
        t.cancel()
    await asyncio.gather(*victims, return_exceptions=True)
