"""What the pace tests share: a clock the test sets, settings with a key prefix of their own,
and the stores on both backends."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from service.settings.pace import PaceSettings
from service.stores.pace import MemoryPaceStore, PaceStore, RedisPaceStore

START = 1_796_083_200.0
"""2026-12-01 00:00 UTC, where simulated clocks begin."""


class Clock:
    """A clock that stands still until the test moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def pace_settings(**values: Any) -> PaceSettings:
    """Settings whose Redis keys no other test shares."""
    values.setdefault("redis_prefix", f"test-{uuid.uuid4().hex}")
    return PaceSettings.model_validate(values)


StoreFactory = Callable[[Callable[[], float] | None], PaceStore]
"""Makes a store timed by the given clock (None: the store's own, Redis's TIME)."""


@asynccontextmanager
async def stores(backend: str, redis_url: str | None) -> AsyncIterator[StoreFactory]:
    """A factory of stores on `backend`, each closed when the block ends; on Redis, each store
    has its own client, as each instance of a group has."""
    async with AsyncExitStack() as stack:
        made: list[PaceStore] = []

        def make(clock: Callable[[], float] | None) -> PaceStore:
            if backend == "memory":
                store: PaceStore = MemoryPaceStore(clock) if clock else MemoryPaceStore()
            else:
                assert redis_url is not None
                store = RedisPaceStore(redis_url, clock=clock)
            made.append(store)
            return store

        stack.push_async_callback(_close_all, made)
        yield make


async def _close_all(made: list[PaceStore]) -> None:
    for store in made:
        await store.close()
