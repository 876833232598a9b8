"""Loop time per record: only the steps a coroutine runs count, not the time it waits."""

from __future__ import annotations

import asyncio

import pytest

from service.flow.loop_time import LoopTime


class Clock:
    """A clock that moves only when the code under test says it worked."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_steps_are_added_up_and_the_waits_left_out() -> None:
    clock = Clock()

    async def record() -> str:
        clock.now += 0.030  # a step: rendering, say
        await asyncio.sleep(0.01)  # waits; other records run meanwhile (and the clock is still)
        clock.now += 0.020
        await asyncio.sleep(0)
        clock.now += 0.005
        return "done"

    timed = LoopTime(record(), clock)
    assert "done" == await timed
    assert pytest.approx(0.055) == timed.seconds
    assert pytest.approx(0.030) == timed.longest


async def test_an_exception_and_a_cancellation_pass_through() -> None:
    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    with pytest.raises(KeyError):
        await LoopTime(fails())

    started = asyncio.Event()

    async def waits() -> None:
        started.set()
        await asyncio.sleep(30)

    task = asyncio.ensure_future(LoopTime(waits()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
