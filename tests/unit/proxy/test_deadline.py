"""proxy.deadline: one reschedulable timer cancelling its task, distinguishable from other
cancels."""

from __future__ import annotations

import asyncio

import pytest

from proxy.deadline import Deadline


async def test_expiry_cancels_the_task_and_is_recognised() -> None:
    dl = Deadline()
    dl.set(0.05, "headers")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert dl.expired_by()
    assert dl.phase == "headers"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    dl.close()


async def test_moving_the_deadline_later_keeps_the_task_alive() -> None:
    dl = Deadline()
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.2
    # Progress every 20 ms with the deadline 0.5 s ahead: only a timer that re-arms itself
    # survives 1.2 s (a fixed one would cancel at 0.5 s); the margin absorbs a loaded host.
    while loop.time() < end:
        dl.set(0.5, "idle")
        await asyncio.sleep(0.02)
    dl.close()
    assert not dl.expired


async def test_shorter_deadline_reschedules_the_timer() -> None:
    dl = Deadline()
    dl.set(30, "idle")
    dl.set(0.05, "send")  # earlier than the armed timer: must fire at 50 ms, not 30 s
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(asyncio.sleep(5), timeout=2)
    assert dl.expired_by()
    assert dl.phase == "send"


async def test_cap_bounds_every_phase_and_is_reported_as_total() -> None:
    dl = Deadline(cap_seconds=0.05)
    dl.set(30, "idle")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert dl.expired_by()
    assert dl.phase == "total"


async def test_clear_disarms() -> None:
    dl = Deadline()
    dl.set(0.03, "idle")
    dl.clear()
    await asyncio.sleep(0.1)
    assert not dl.expired
    dl.close()


async def test_foreign_cancellation_is_not_absorbed() -> None:
    """A client disconnect arriving with the deadline must still cancel the handler."""
    seen: list[bool] = []

    async def handler() -> None:
        me = asyncio.current_task()
        assert me is not None
        dl = Deadline()
        dl.set(0.01, "idle")
        # The disconnect lands in the same loop iteration as the deadline.
        asyncio.get_running_loop().call_later(0.01, me.cancel)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            seen.append(dl.expired_by())
            raise

    task = asyncio.get_running_loop().create_task(handler())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [False]


def test_requires_a_running_task() -> None:
    with pytest.raises(RuntimeError):
        Deadline()


async def test_a_given_loop_finds_the_current_task() -> None:
    async def guarded() -> bool:
        dl = Deadline(loop=asyncio.get_running_loop())
        dl.set(0.05, "idle")
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            return dl.expired_by()
        return False

    # The deadline is made inside the task it guards, which alone is cancelled.
    assert await asyncio.wait_for(asyncio.get_running_loop().create_task(guarded()), 2)
    assert not asyncio.current_task().cancelling()  # type: ignore[union-attr]
