"""Redis out of reach, or unable to write for now, as StoreUnavailable: the one translation
the idempotency store, the caps and pace share, so the flow waits and asks again rather than
failing the record."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterator
from typing import TypeVar

from service.errors import StoreUnavailable

T = TypeVar("T")

_UNAVAILABLE_REPLIES = frozenset({"MASTERDOWN", "BUSY", "TRYAGAIN", "CLUSTERDOWN"})
"""Redis error replies that mean the server cannot serve writes for now (RESP error prefixes)."""


@contextlib.contextmanager
def map_redis_errors() -> Iterator[None]:
    """Redis down, read-only, out of memory or loading as StoreUnavailable; other errors as
    they are."""
    import redis.exceptions

    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        # A replica that is read-only, a server out of memory or still loading: the store
        # cannot take writes now, which is Redis's state, not the record's. redis-py maps
        # some replies to classes and strips their prefix; others keep it.
        unavailable = (
            redis.exceptions.ReadOnlyError,
            redis.exceptions.OutOfMemoryError,
            redis.exceptions.BusyLoadingError,
            redis.exceptions.MasterDownError,
            redis.exceptions.TryAgainError,
            redis.exceptions.ClusterDownError,
        )
        if isinstance(exc, unavailable) or str(exc).split(" ", 1)[0] in _UNAVAILABLE_REPLIES:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        raise


async def redis_guarded(call: Awaitable[T]) -> T:
    """Await a Redis call, its errors translated by `map_redis_errors`."""
    with map_redis_errors():
        return await call
