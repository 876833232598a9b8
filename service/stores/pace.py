"""The pace store: token buckets and window counters, taken all together or not at all.

One `take` checks every limit a mail is under (the relay's bucket, its domain's, the warm-up
ramp's hour and day) and either takes one from each, or takes nothing and says when the
scarcest will have one. Reserved mail may empty a bucket; bulk must leave its reserve in it.

Backends: `MemoryPaceStore`, a plain object for one instance (its buckets start full again
after a restart, which for pace means at most one burst more than the rate: acceptable), and
`RedisPaceStore`, one Lua script per take, shared by every instance and timed by the Redis
server's clock (`TIME`), so instances whose clocks disagree still agree on the buckets.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.settings.pace import PaceSettings
from service.stores.redis_errors import map_redis_errors


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketLimit:
    """A token bucket under `key`."""

    key: str
    rate_per_s: float
    """Tokens added a second."""
    burst: float
    """The bucket's size."""
    reserve: float
    """Tokens bulk must leave in the bucket (`critical_share` * burst); a bucket too small
    to hold the reserve and one more lets bulk take its last token when it is full."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowLimit:
    """A counter under `key`, at most `limit` until `ends` (epoch seconds), then a new key."""

    key: str
    limit: int
    reserve: int
    """Counts only reserved mail may use (`floor(critical_share * limit)`)."""
    ends: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Taken:
    """What a take found: taken, or the first moment every limit could be, and which limit
    (its index in buckets + windows) held it back longest."""

    go: bool
    not_before: float | None = None
    blocking: int | None = None
    now: float
    """The store's clock when it decided (the Redis server's time, for Redis)."""


def refill(tokens: float, since_s: float, *, rate_per_s: float, burst: float) -> float:
    """The bucket's level `since_s` seconds after it held `tokens`: it never overflows."""
    return min(burst, tokens + max(0.0, since_s) * rate_per_s)


EPSILON = 1e-3
"""Tokens a bucket may lack and still give one: a caller back at the not-before moment finds
the token it was promised, though epoch seconds in a float are only good to a quarter of a
microsecond. A bucket never goes lower than -EPSILON, so over any span at most
burst + rate x span + EPSILON go."""


def ready_at(tokens: float, now: float, *, need: float, rate_per_s: float) -> float:
    """When a bucket holding `tokens` at `now` will hold `need`."""
    return now if tokens + EPSILON >= need else now + (need - tokens) / rate_per_s


class PaceStore(ABC):
    @abstractmethod
    async def take(
        self, buckets: Sequence[BucketLimit], windows: Sequence[WindowLimit], *, reserved: bool
    ) -> Taken:
        """One from every limit, or none and when; StoreUnavailable while out of reach."""

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> PaceStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class MemoryPaceStore(PaceStore):
    """This process's buckets: exact for one instance; each instance of a group would have
    its own, so N instances send N times the rate."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        """Level and when, by key."""
        self._windows: dict[str, tuple[int, float]] = {}
        """Count and the window's end, by key."""

    async def take(
        self, buckets: Sequence[BucketLimit], windows: Sequence[WindowLimit], *, reserved: bool
    ) -> Taken:
        now = self._clock()
        self._forget(now)
        levels: list[float] = []
        worst, blocking = now, None
        for i, b in enumerate(buckets):
            tokens, at = self._buckets.get(b.key, (b.burst, now))
            level = refill(tokens, now - at, rate_per_s=b.rate_per_s, burst=b.burst)
            levels.append(level)
            need = 1.0 if reserved else min(1.0 + b.reserve, b.burst)
            ready = ready_at(level, now, need=need, rate_per_s=b.rate_per_s)
            if ready > worst:  # `now` when the bucket has enough, and worst starts at now
                worst, blocking = ready, i
        # A full window blocks until its end, even an end this clock has passed: the window's
        # key and end come from the caller's wall clock, which may run behind this one.
        for j, w in enumerate(windows):
            used = self._windows.get(w.key, (0, w.ends))[0]
            cap = w.limit if reserved else w.limit - w.reserve
            if used >= cap and (blocking is None or w.ends > worst):
                worst, blocking = w.ends, len(buckets) + j
        if blocking is not None:
            return Taken(go=False, not_before=worst, blocking=blocking, now=now)
        for b, level in zip(buckets, levels, strict=True):
            self._buckets[b.key] = (level - 1.0, now)
        for w in windows:
            self._windows[w.key] = (self._windows.get(w.key, (0, w.ends))[0] + 1, w.ends)
        return Taken(go=True, now=now)

    def _forget(self, now: float) -> None:
        """Drop counters of windows a day past (so a long run does not keep every hour's);
        a day, since the caller's clock, which names the windows, may run behind this one."""
        for key in [k for k, (_, ends) in self._windows.items() if ends + 86_400 <= now]:
            del self._windows[key]


# KEYS: the buckets, then the windows. ARGV: now ('' for the server's TIME), reserved (1/0),
# the number of buckets and of windows, then rate, burst, reserve per bucket and limit,
# reserve, end (epoch s), TTL (s) per window. The same arithmetic as MemoryPaceStore.take.
# Returns {go, not_before, blocking (1-based, 0 for none), now}; numbers as strings, since
# Redis truncates a Lua number to an integer. 0.001 is EPSILON.
_TAKE = """
local now
if ARGV[1] ~= '' then
  now = tonumber(ARGV[1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local reserved = ARGV[2] == '1'
local nb, nw = tonumber(ARGV[3]), tonumber(ARGV[4])
local worst, blocking = now, 0
local levels = {}
local a = 5
for i = 1, nb do
  local rate, burst, reserve = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local s = redis.call('HMGET', KEYS[i], 'tokens', 'at')
  local level = burst
  if s[1] then
    level = math.min(burst, tonumber(s[1]) + math.max(0, now - tonumber(s[2])) * rate)
  end
  levels[i] = level
  local need = 1
  if not reserved then need = math.min(1 + reserve, burst) end
  if level + 0.001 < need then
    local ready = now + (need - level) / rate
    if ready > worst then worst, blocking = ready, i end
  end
end
for j = 1, nw do
  local limit, reserve, ends = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 4
  local used = tonumber(redis.call('GET', KEYS[nb + j]) or '0')
  local cap = limit
  if not reserved then cap = limit - reserve end
  if used >= cap and (blocking == 0 or ends > worst) then worst, blocking = ends, nb + j end
end
if blocking > 0 then
  return {0, string.format('%.17g', worst), blocking, string.format('%.17g', now)}
end
a = 5
for i = 1, nb do
  local rate, burst = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 3
  redis.call('HSET', KEYS[i], 'tokens', string.format('%.17g', levels[i] - 1),
             'at', string.format('%.17g', now))
  -- Once refilled, a bucket is as good as absent.
  redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
end
for j = 1, nw do
  redis.call('INCR', KEYS[nb + j])
  if redis.call('TTL', KEYS[nb + j]) < 0 then
    redis.call('EXPIRE', KEYS[nb + j], tonumber(ARGV[a + 3]))
  end
  a = a + 4
end
return {1, '', 0, string.format('%.17g', now)}
"""


class RedisPaceStore(PaceStore):
    """Buckets and counters in Redis, shared by every instance of the group."""

    def __init__(
        self, url: str, *, connections: int = 16, clock: Callable[[], float] | None = None
    ) -> None:
        """`clock`: None times the buckets by the Redis server (production); tests pass a
        simulated one to run minutes of traffic through the same script in no time."""
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=5,
            socket_timeout=5,
            socket_connect_timeout=5,
        )
        self._redis = redis.asyncio.Redis(connection_pool=pool)
        self._script = self._redis.register_script(_TAKE)
        self._clock = clock

    async def take(
        self, buckets: Sequence[BucketLimit], windows: Sequence[WindowLimit], *, reserved: bool
    ) -> Taken:
        now = "" if self._clock is None else repr(self._clock())
        args: list[str | int | float] = [now, int(reserved), len(buckets), len(windows)]
        for b in buckets:
            args += [repr(b.rate_per_s), repr(b.burst), repr(b.reserve)]
        for w in windows:
            ttl_s = max(1, math.ceil(w.ends - (self._clock or time.time)()) + 3600)
            args += [w.limit, w.reserve, repr(w.ends), ttl_s]
        keys = [b.key for b in buckets] + [w.key for w in windows]
        with map_redis_errors():
            go, not_before, blocking, server_now = await self._script(keys=keys, args=args)
        if int(go):
            return Taken(go=True, now=float(server_now))
        return Taken(
            go=False,
            not_before=float(not_before),
            blocking=int(blocking) - 1,
            now=float(server_now),
        )

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def open_pace_store(settings: PaceSettings, *, redis_url: str, connections: int = 16) -> PaceStore:
    """The configured backend; `redis_url` is `idempotency.redis_url`, used by `redis` only.
    `connections`: admits in flight at once, each holding one while its script runs."""
    if settings.backend == "redis":
        return RedisPaceStore(redis_url, connections=connections)
    return MemoryPaceStore()
