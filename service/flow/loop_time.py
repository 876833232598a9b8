"""How long a record holds the event loop: its coroutine driven step by step, each step timed.

A step is what runs between two awaits that really wait; while it runs, nothing else on the
loop does (another record's mail, a rebalance callback, `/healthz`). The sum of a record's
steps is its loop time, the longest step how long it held the loop at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class LoopTime(Generic[T]):
    """Await it instead of the coroutine: same result, plus `seconds` and `longest`."""

    __slots__ = ("_clock", "_coro", "longest", "seconds")

    def __init__(
        self, coro: Coroutine[Any, Any, T], clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._coro = coro
        self._clock = clock
        self.seconds = 0.0
        self.longest = 0.0

    def _add(self, step: float) -> None:
        self.seconds += step
        if step > self.longest:
            self.longest = step

    def __await__(self) -> Generator[Any, Any, T]:
        coro, clock = self._coro, self._clock
        value: Any = None
        error: BaseException | None = None
        while True:
            began = clock()
            try:
                waiting = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                self._add(clock() - began)
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                self._add(clock() - began)
                raise
            self._add(clock() - began)
            try:
                value, error = (yield waiting), None
            except BaseException as thrown:  # a cancellation, handed on to the coroutine
                value, error = None, thrown
