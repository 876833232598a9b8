"""Frequency caps: how many mails of a category one recipient got in a rolling window.

A counter is a set of idempotency keys with the time each was let through. `take` drops
entries older than the window, and adds the key if the set is below the maximum; a key already
in the set counts once, so a redelivered record does not use up the recipient's allowance.
Backends: Redis (one Lua script per call, so instances share caps and cannot both take the
last place) and SQLite (embedded, one instance).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from service.stores.redis_errors import redis_guarded


class CapStore(ABC):
    @abstractmethod
    async def take(self, counter: str, member: str, limit: int, window_s: int) -> bool:
        """Count `member` in `counter` and say True, unless `limit` are already counted."""

    @abstractmethod
    async def forget(self, prefix: str) -> int:
        """Drop every counter whose name starts with `prefix`; returns how many."""

    async def close(self) -> None:
        return None


class SqliteCaps(CapStore):
    """Counters in the local state file; right for one instance per consumer group."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS caps (counter TEXT NOT NULL, member TEXT NOT NULL, "
            "at REAL NOT NULL, PRIMARY KEY (counter, member)) WITHOUT ROWID"
        )
        self._lock = asyncio.Lock()

    async def take(self, counter: str, member: str, limit: int, window_s: int) -> bool:
        now = time.time()
        async with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM caps WHERE counter=? AND at<=?", (counter, now - window_s))
                seen = db.execute(
                    "SELECT 1 FROM caps WHERE counter=? AND member=?", (counter, member)
                ).fetchone()
                count = db.execute("SELECT count(*) FROM caps WHERE counter=?", (counter,))
                allowed = seen is not None or count.fetchone()[0] < limit
                if allowed and seen is None:
                    db.execute("INSERT INTO caps VALUES (?, ?, ?)", (counter, member, now))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return allowed

    async def forget(self, prefix: str) -> int:
        async with self._lock:
            rows = self._db.execute(
                "SELECT count(DISTINCT counter) FROM caps WHERE substr(counter, 1, ?) = ?",
                (len(prefix), prefix),
            ).fetchone()[0]
            self._db.execute(
                "DELETE FROM caps WHERE substr(counter, 1, ?) = ?", (len(prefix), prefix)
            )
        return int(rows)

    async def close(self) -> None:
        self._db.close()


class RedisCaps(CapStore):
    """Counters as sorted sets in Redis, shared by every instance; Redis's clock is the time."""

    _PREFIX = "herald:cap:"
    _TAKE = """
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local window = tonumber(ARGV[3])
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
    if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
    if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
    redis.call('ZADD', KEYS[1], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[1], window)
    return 1
    """

    def __init__(self, url: str, *, connections: int = 64) -> None:
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url, max_connections=connections, timeout=5, socket_timeout=5, socket_connect_timeout=5
        )
        self._redis: Any = redis.asyncio.Redis(connection_pool=pool)

    async def take(self, counter: str, member: str, limit: int, window_s: int) -> bool:
        key = self._PREFIX + counter
        got = await redis_guarded(
            self._redis.eval(self._TAKE, 1, key, member, limit, window_s * 1000)
        )
        return bool(got)

    async def forget(self, prefix: str) -> int:
        gone = 0
        async for key in self._redis.scan_iter(match=_glob(self._PREFIX + prefix) + "*"):
            gone += await redis_guarded(self._redis.delete(key))
        return gone

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def _glob(text: str) -> str:
    """`text` with Redis glob characters escaped, for SCAN MATCH."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
