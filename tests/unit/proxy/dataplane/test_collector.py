"""proxy.dataplane.collector: start-up objects frozen, full collections on a timer only."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from proxy.dataplane import collector


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def gc_state() -> Iterator[None]:
    """Restore the collector as the test found it."""
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    if enabled:
        gc.enable()


def test_settle_freezes_start_up_objects_and_stops_automatic_full_collections(
    gc_state: None,
) -> None:
    young, middle, _ = gc.get_threshold()
    kept = _Node()  # alive at start-up: frozen
    collector.settle()
    assert gc.get_freeze_count() > 0
    assert not any(o is kept for o in gc.get_objects())  # out of every generation's sight
    assert gc.get_threshold() == (young, middle, collector.NO_AUTOMATIC_FULL)
    # The young generations still collect garbage cycles on their own.
    gone = weakref.ref(_Node())
    gc.collect(0)
    assert gone() is None


async def test_full_collections_run_on_the_timer(gc_state: None) -> None:
    gc.disable()  # no allocation-triggered collection: only the timer's
    old = _Node()
    ref = weakref.ref(old)
    gc.collect()  # ... after surviving collections it would sit in the oldest generation
    del old
    task = asyncio.get_running_loop().create_task(collector.full_collections(0.05))
    try:
        assert ref() is not None  # nothing collected it yet
        for _ in range(100):
            await asyncio.sleep(0.02)
            if ref() is None:
                break
        assert ref() is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
