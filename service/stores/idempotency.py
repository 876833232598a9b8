"""The idempotency store: what became of each notification, remembered across restarts.

Every notification has a key (event id + type + recipient). Before SMTP the key is *claimed*,
just before the message body is handed over it is marked *in DATA*, and once the server accepts
it, *accepted*. A redelivered record then finds:
- nothing, or a claim (an earlier try died before DATA): send;
- in DATA: the earlier try may have been accepted (RFC 1047): report UNKNOWN, never resend;
- accepted: report DEDUPLICATED, never resend.
A definite failure releases the key, so a later retry may send.

Backends: `sqlite` (embedded, a file; for one instance per consumer group) and `redis` (shared by
all instances, so a partition moving between them cannot cause a duplicate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import structlog

from service.errors import StoreUnavailable
from service.settings import IdempotencySettings
from service.stores.redis_errors import redis_guarded

log = structlog.get_logger("herald.idempotency")


class State(StrEnum):
    NEW = "new"
    CLAIMED = "claimed"
    IN_DATA = "in_data"
    ACCEPTED = "accepted"


@dataclass(frozen=True, slots=True, kw_only=True)
class Prior:
    """What the store knew of a key when it was claimed."""

    state: State
    message_id: str | None = None
    smtp_code: int | None = None
    sent_at_ms: int | None = None


class IdempotencyStore(ABC):
    @abstractmethod
    async def claim(self, key: str) -> Prior:
        """Record an attempt unless the key is already in DATA or accepted; return the prior."""

    @abstractmethod
    async def data_started(self, key: str) -> None: ...

    @abstractmethod
    async def accepted(
        self, key: str, *, message_id: str, smtp_code: int, sent_at_ms: int
    ) -> None: ...

    @abstractmethod
    async def release(self, key: str) -> None:
        """Forget a claim after a definite non-delivery."""

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> IdempotencyStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _prior(raw: str | bytes | None) -> Prior:
    if raw is None:
        return Prior(state=State.NEW)
    data: dict[str, Any] = json.loads(raw)
    return Prior(
        state=State(data["state"]),
        message_id=data.get("message_id"),
        smtp_code=data.get("smtp_code"),
        sent_at_ms=data.get("sent_at_ms"),
    )


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""One encoder: `json.dumps` with separators builds a new one per call (a third of a write)."""


_BARE = {s: _COMPACT.encode({"state": s.value}) for s in State}


def _value(state: State, **extra: Any) -> str:
    return _COMPACT.encode({"state": state.value, **extra}) if extra else _BARE[state]


class SqliteStore(IdempotencyStore):
    """A WAL-mode SQLite file: survives kill -9 of the process; one writer, this instance.

    Writes are group-committed: a commit, not a statement, is what costs (a WAL frame written
    each time), and a loaded event loop makes three writes per mail. A claim need not reach
    the file at all (a claim lost reads as "new", which means the same: send), so it waits for
    the next commit, whoever makes it. The in-DATA mark must be in the file before the body
    leaves, so it commits at once, with whatever waits. An acceptance or a release waits for
    the commit scheduled at the end of the event loop's current pass. Reads see pending
    writes first.
    """

    def __init__(self, path: Path, retention_h: int, *, busy_timeout_s: float = 5.0) -> None:
        """`busy_timeout_s`: how long a statement waits for another process's lock on the
        file before the store counts as out of reach."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives the process dying; only an OS crash can lose the last ones.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS notification_keys "
            "(key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_ms INTEGER NOT NULL)"
        )
        self._retention_ms = retention_h * 3_600_000
        self._claims = 0
        self._pending: dict[str, str | None] = {}
        """Writes not committed yet, by key: a value, or None to delete the key."""
        self._committed: asyncio.Future[None] | None = None
        """Resolved by the commit scheduled for the end of this pass, if one is."""
        self._expire()

    def _expire(self) -> None:
        cutoff = int(time.time() * 1000) - self._retention_ms
        self._db.execute("DELETE FROM notification_keys WHERE updated_ms < ?", (cutoff,))

    def _get(self, key: str) -> Prior:
        if key in self._pending:
            return _prior(self._pending[key])
        row = self._db.execute(
            "SELECT value FROM notification_keys WHERE key = ?", (key,)
        ).fetchone()
        return _prior(row[0] if row else None)

    def _write(self, key: str, value: str | None) -> asyncio.Future[None]:
        """Queue a write; the future resolves once it is committed."""
        self._pending[key] = value
        if self._committed is None:
            loop = asyncio.get_running_loop()
            self._committed = loop.create_future()
            loop.call_soon(self._commit_pending)
        return self._committed

    def _commit_pending(self) -> None:
        batch, self._pending = self._pending, {}
        done, self._committed = self._committed, None
        try:
            self._commit(batch)
        except StoreUnavailable as exc:
            if done is not None and not done.done():
                done.set_exception(exc)
                done.exception()  # claims alone do not wait: not an unretrieved error
        else:
            if done is not None and not done.done():
                done.set_result(None)

    def _commit(self, batch: dict[str, str | None]) -> None:
        """One transaction for every write in `batch`; a locked or failing file is a store
        out of reach, so callers wait and write again rather than crash."""
        if not batch:
            return
        now_ms = int(time.time() * 1000)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT INTO notification_keys (key, value, updated_ms) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value, updated_ms = excluded.updated_ms",
                [(k, v, now_ms) for k, v in batch.items() if v is not None],
            )
            self._db.executemany(
                "DELETE FROM notification_keys WHERE key = ?",
                [(k,) for k, v in batch.items() if v is None],
            )
            self._db.execute("COMMIT")
        except BaseException as exc:
            if self._db.in_transaction:  # a failed COMMIT leaves it open: the next BEGIN would fail
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"sqlite: {exc}") from exc
            raise

    async def claim(self, key: str) -> Prior:
        self._claims += 1
        if self._claims % 10_000 == 0:  # keep the file bounded without a timer task
            self._expire()
        prior = self._get(key)
        if prior.state in (State.NEW, State.CLAIMED):
            # Queued without a commit of its own: the mail's in-DATA commit takes it along.
            # Paced, with a mail or two per pass of the loop, a commit for it cost a third of
            # the store's time.
            self._pending[key] = _value(State.CLAIMED)
        return prior

    async def data_started(self, key: str) -> None:
        self._pending[key] = _value(State.IN_DATA)
        batch, self._pending = self._pending, {}
        try:
            self._commit(batch)
        except StoreUnavailable:
            # The others' writes stay queued for the next commit; this one the caller retries.
            batch.pop(key, None)
            self._pending = {**batch, **self._pending}
            raise

    async def accepted(self, key: str, *, message_id: str, smtp_code: int, sent_at_ms: int) -> None:
        value = _value(
            State.ACCEPTED, message_id=message_id, smtp_code=smtp_code, sent_at_ms=sent_at_ms
        )
        # Shielded: the commit is shared, and a caller cancelled (a revoked partition's
        # straggler) must not cancel it for the others.
        await asyncio.shield(self._write(key, value))

    async def release(self, key: str) -> None:
        await asyncio.shield(self._write(key, None))

    async def close(self) -> None:
        """Commits what is still queued (claims, or writes whose callers were cancelled)."""
        try:
            self._commit_pending()
        finally:
            self._db.close()


class RedisStore(IdempotencyStore):
    """Keys in Redis with the retention as TTL, shared by every instance of the group."""

    _PREFIX = "herald:notification:"

    def __init__(self, url: str, retention_h: int, *, connections: int = 64) -> None:
        """`connections`: one per record in flight, at most; a record waits for a free one
        (up to the socket timeout) rather than failing, which the default pool would do."""
        import redis.asyncio

        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=connections,
            timeout=5,
            socket_timeout=5,
            socket_connect_timeout=5,
        )
        self._redis = redis.asyncio.Redis(connection_pool=pool)
        self._ttl_s = retention_h * 3600

    async def _call(self, coro: Any) -> Any:
        return await redis_guarded(coro)

    # One round trip, atomic: two instances claiming at once cannot overwrite "in DATA" or
    # "accepted" with "claimed". Returns the previous value (nil when new).
    _CLAIM = """
    local prev = redis.call('GET', KEYS[1])
    if (not prev) or string.find(prev, '"state":"claimed"', 1, true) then
      redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    end
    return prev
    """

    async def claim(self, key: str) -> Prior:
        prev = await self._call(
            self._redis.eval(self._CLAIM, 1, self._PREFIX + key, _value(State.CLAIMED), self._ttl_s)
        )
        return _prior(prev)

    async def data_started(self, key: str) -> None:
        await self._call(self._redis.set(self._PREFIX + key, _value(State.IN_DATA), ex=self._ttl_s))

    async def accepted(self, key: str, *, message_id: str, smtp_code: int, sent_at_ms: int) -> None:
        value = _value(
            State.ACCEPTED, message_id=message_id, smtp_code=smtp_code, sent_at_ms=sent_at_ms
        )
        await self._call(self._redis.set(self._PREFIX + key, value, ex=self._ttl_s))

    async def release(self, key: str) -> None:
        await self._call(self._redis.delete(self._PREFIX + key))

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def open_store(settings: IdempotencySettings, *, in_flight: int) -> IdempotencyStore:
    """`in_flight`: records processed at once, each needing at most one store call at a time."""
    if settings.backend == "redis":
        return RedisStore(
            settings.redis_url.get_secret_value(), settings.retention_h, connections=in_flight
        )
    return SqliteStore(settings.path, settings.retention_h)
