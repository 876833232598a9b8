"""The pool's connection slots, express mail first."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    """The pool's connection slots, handed out express first.

    Express waiters are served before any bulk waiter, and `reserved` slots are theirs alone:
    with every other connection busy with bulk DATA, a password reset still goes at once.
    """

    def __init__(self, size: int, reserved: int = 0) -> None:
        self._size = size
        self._bulk_limit = size - reserved
        self._used = 0
        self._bulk_used = 0
        self._waiters: dict[bool, deque[asyncio.Future[None]]] = {True: deque(), False: deque()}

    def _free(self, express: bool) -> bool:
        return self._used < self._size and (express or self._bulk_used < self._bulk_limit)

    def _take(self, express: bool) -> None:
        self._used += 1
        self._bulk_used += not express

    async def acquire(self, express: bool) -> None:
        ahead = self._waiters[True] or (not express and self._waiters[False])
        if not ahead and self._free(express):
            self._take(express)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters[express].append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(express)  # granted, but its task was cancelled before it ran
            else:
                # A release may have dropped the cancelled future from the queue already.
                with contextlib.suppress(ValueError):
                    self._waiters[express].remove(fut)
            raise

    def release(self, express: bool) -> None:
        self._used -= 1
        self._bulk_used -= not express
        for kind in (True, False):
            queue = self._waiters[kind]
            while queue and self._free(kind):
                fut = queue.popleft()
                if not fut.done():
                    self._take(kind)
                    fut.set_result(None)
            if queue:
                return  # still waiting express mail keeps bulk waiting too

    @property
    def in_use(self) -> int:
        return self._used
