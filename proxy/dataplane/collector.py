"""The cyclic garbage collector in a worker: kept out of the relay's way.

Two costs were measured under 512 relayed streams (bench (g)):

- Everything loaded at start-up (the TLS, ACME, attestation and receipt modules and their
  objects) sat in the oldest generation, so every full collection walked all of it and
  stopped the loop for 40-85 ms. Those objects live as long as the process: once the worker
  is up they are moved out of the collector's sight (``gc.freeze()``, as pre-forking
  servers do) by :func:`settle`.
- Even then, CPython starts a full collection whenever the objects promoted to the oldest
  generation grow by a quarter. After a freeze that generation starts nearly empty, so
  the open streams' own objects (their protocols, tasks, buffers) soon trigger one, and it
  walks all of them: 18-37 ms with the loop stopped, every few seconds while streams open.
  Every event that arrives in such a pause is late by up to its length, which is the p99
  delay of a loaded worker. :func:`settle` therefore takes full collections off the
  allocation trigger (the oldest generation's threshold is set out of reach) and
  :func:`full_collections` runs one every :data:`FULL_INTERVAL` seconds instead: the same
  pause, once a minute instead of every few seconds (at 10,000 events/s a 35 ms pause
  touches 0.06 % of a minute's events).

The young generations are collected as before: garbage cycles (exceptions with their
tracebacks, cancelled tasks) are nearly always found there while young; what reaches the
oldest generation and then dies waits at most :data:`FULL_INTERVAL` seconds.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Final

from proxy.log import server_log as log

__all__ = ["FULL_INTERVAL", "NO_AUTOMATIC_FULL", "full_collections", "settle"]

# Seconds between full collections (the oldest generation).
FULL_INTERVAL: Final = 60.0
# The oldest generation's threshold counts collections of the middle one (about one per
# second under load): this one is not reached in the lifetime of a process.
NO_AUTOMATIC_FULL: Final = 1_000_000_000


def settle() -> None:
    """Once the worker is up: freeze what start-up made, and stop automatic full
    collections (:func:`full_collections` runs them)."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, NO_AUTOMATIC_FULL)


async def full_collections(interval: float = FULL_INTERVAL) -> None:
    """Run a full collection every ``interval`` seconds (a background task of the worker)."""
    while True:
        await asyncio.sleep(interval)
        started = time.perf_counter()
        found = gc.collect()
        log.debug(
            "full garbage collection: %d unreachable objects, loop stopped %.1f ms",
            found,
            (time.perf_counter() - started) * 1e3,
        )
