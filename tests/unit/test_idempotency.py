"""The idempotency store, on both backends: SQLite (embedded) and a real redis-server."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from service.errors import StoreUnavailable
from service.flow.handler import patiently
from service.stores.idempotency import (
    IdempotencyStore,
    RedisStore,
    SqliteStore,
    State,
)


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    if request.param == "sqlite":
        s: IdempotencyStore = SqliteStore(tmp_path / "keys.sqlite3", retention_h=1)
    else:
        s = RedisStore(request.getfixturevalue("redis_url"), retention_h=1)
    async with s:
        yield s


async def test_life_of_a_key(store: IdempotencyStore, request: pytest.FixtureRequest) -> None:
    """new → claimed → in DATA → accepted; each later claim reports where it got to."""
    key = f"k-{request.node.callspec.id}"
    assert State.NEW == (await store.claim(key)).state
    assert State.CLAIMED == (await store.claim(key)).state  # died before DATA: may resend
    await store.data_started(key)
    assert State.IN_DATA == (await store.claim(key)).state  # RFC 1047 window: do not resend
    await store.accepted(key, message_id="<m@x>", smtp_code=250, sent_at_ms=123)
    prior = await store.claim(key)
    assert (State.ACCEPTED, "<m@x>", 250, 123) == (
        prior.state,
        prior.message_id,
        prior.smtp_code,
        prior.sent_at_ms,
    )
    assert State.ACCEPTED == (await store.claim(key)).state  # claiming never downgrades


async def test_release_forgets_a_claim(
    store: IdempotencyStore, request: pytest.FixtureRequest
) -> None:
    """After a definite failure the key is released, so a retry round may send."""
    key = f"r-{request.node.callspec.id}"
    await store.claim(key)
    await store.release(key)
    assert State.NEW == (await store.claim(key)).state


async def test_sqlite_survives_reopening(tmp_path: Path) -> None:
    """What was accepted before a restart is still known after it."""
    path = tmp_path / "keys.sqlite3"
    async with SqliteStore(path, retention_h=1) as first:
        await first.claim("k")
        await first.accepted("k", message_id="<m@x>", smtp_code=250, sent_at_ms=1)
    async with SqliteStore(path, retention_h=1) as second:
        assert State.ACCEPTED == (await second.claim("k")).state


async def test_redis_out_of_reach_is_store_unavailable() -> None:
    """No store, no sending: the caller waits instead of risking a duplicate."""
    from service.testing import free_port

    async with RedisStore(f"redis://127.0.0.1:{free_port()}/0", retention_h=1) as s:
        with pytest.raises(StoreUnavailable):
            await s.claim("k")


async def test_redis_out_of_memory_is_store_unavailable_until_it_recovers(redis_url: str) -> None:
    """An OOM reply (maxmemory reached, no eviction) is Redis's state, not the record's: the
    caller waits, and the same call succeeds once Redis takes writes again."""
    import redis.asyncio

    admin = redis.asyncio.Redis.from_url(redis_url)
    async with RedisStore(redis_url, retention_h=1) as s:
        try:
            await admin.config_set("maxmemory-policy", "noeviction")
            await admin.config_set("maxmemory", 1)
            with pytest.raises(StoreUnavailable, match="OutOfMemoryError"):
                await s.claim("oom-1")
        finally:
            await admin.config_set("maxmemory", 0)
            await admin.aclose()
        assert State.NEW == (await s.claim("oom-1")).state


async def test_redis_calls_beyond_the_pool_wait_for_a_connection(redis_url: str) -> None:
    """More records in flight than connections: the extra calls queue, none is 'unavailable'."""
    async with RedisStore(redis_url, retention_h=1, connections=4) as s:
        keys = [f"pool-{i}" for i in range(200)]
        priors = await asyncio.gather(*(s.claim(k) for k in keys))
        assert [p.state for p in priors] == [State.NEW] * len(keys)
        again = await asyncio.gather(*(s.claim(k) for k in keys))
        assert {p.state for p in again} == {State.CLAIMED}


def _in_file(path: Path, key: str) -> State | None:
    """The key's state as another connection reads the file: what a restart would find."""
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT value FROM notification_keys WHERE key = ?", (key,)).fetchone()
    return None if row is None else State(json.loads(row[0])["state"])


async def test_sqlite_marks_are_in_the_file_when_the_call_returns(tmp_path: Path) -> None:
    """In DATA before the body leaves, accepted before the outcome is built; a claim may lag."""
    path = tmp_path / "keys.sqlite3"
    async with SqliteStore(path, retention_h=1) as s:
        await s.claim("k")
        assert State.CLAIMED == (await s.claim("k")).state  # read back before any commit
        await s.data_started("k")
        assert State.IN_DATA == _in_file(path, "k")
        await s.accepted("k", message_id="<m@x>", smtp_code=250, sent_at_ms=1)
        assert State.ACCEPTED == _in_file(path, "k")
        await s.claim("gone")
        await s.release("gone")
        assert _in_file(path, "gone") is None


async def test_sqlite_commits_a_pass_of_writes_together(tmp_path: Path) -> None:
    """Acceptances made in one pass of the loop share one commit, and all are in the file.

    Each commit appends at least one page frame to the write-ahead log, so its growth counts
    commits: fifty commits would add fifty frames or more."""
    path = tmp_path / "keys.sqlite3"
    wal = tmp_path / "keys.sqlite3-wal"
    async with SqliteStore(path, retention_h=1) as s:
        keys = [f"k{i}" for i in range(50)]
        for k in keys:
            await s.claim(k)
        await asyncio.sleep(0)
        before = wal.stat().st_size
        await asyncio.gather(
            *(s.accepted(k, message_id=f"<{k}@x>", smtp_code=250, sent_at_ms=1) for k in keys)
        )
        frames = (wal.stat().st_size - before) / (4096 + 24)
        assert 1 <= frames <= 5
        assert all(State.ACCEPTED == _in_file(path, k) for k in keys)


async def test_sqlite_claims_wait_for_the_next_commit(tmp_path: Path) -> None:
    """A claim makes no commit of its own (a lost claim reads as new: send, the same thing);
    the next commit, here the in-DATA mark of another key, writes it; closing writes the rest."""
    path = tmp_path / "keys.sqlite3"
    wal = tmp_path / "keys.sqlite3-wal"
    s = SqliteStore(path, retention_h=1)
    before = wal.stat().st_size  # the table, made at open
    await s.claim("a")
    await s.claim("b")
    await asyncio.sleep(0.01)
    assert before == wal.stat().st_size
    assert _in_file(path, "a") is None
    await s.data_started("b")
    assert State.CLAIMED == _in_file(path, "a")
    assert State.IN_DATA == _in_file(path, "b")
    await s.claim("c")
    await s.close()
    assert State.CLAIMED == _in_file(path, "c")


async def test_sqlite_cancelled_caller_does_not_cancel_the_shared_commit(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite3"
    async with SqliteStore(path, retention_h=1) as s:
        first = asyncio.create_task(
            s.accepted("a", message_id="<a@x>", smtp_code=250, sent_at_ms=1)
        )
        second = asyncio.create_task(
            s.accepted("b", message_id="<b@x>", smtp_code=250, sent_at_ms=1)
        )
        await asyncio.sleep(0)  # both wait on the commit scheduled for this pass
        first.cancel()
        await second
        assert first.cancelled()
        assert State.ACCEPTED == _in_file(path, "b")
        assert State.ACCEPTED == _in_file(path, "a")  # its write was queued before the cancel


async def test_sqlite_locked_by_another_process_is_store_unavailable(tmp_path: Path) -> None:
    """A second writer on the file (a misconfigured second instance) makes callers wait and
    write again, through the flow's `patiently`, instead of crashing the record."""
    path = tmp_path / "keys.sqlite3"
    async with SqliteStore(path, retention_h=1, busy_timeout_s=0.05) as s:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        try:
            with pytest.raises(StoreUnavailable):
                await s.data_started("k")
            with pytest.raises(StoreUnavailable):
                await s.accepted("k", message_id="<m@x>", smtp_code=250, sent_at_ms=1)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await patiently(lambda: s.data_started("k"), "test")
        assert State.IN_DATA == _in_file(path, "k")


async def test_sqlite_full_file_is_store_unavailable_and_the_store_recovers(
    tmp_path: Path,
) -> None:
    """A write failing inside the transaction (the file may not grow: SQLITE_FULL, produced
    with `max_page_count`) rolls it back, so the next write can begin one of its own."""
    async with SqliteStore(tmp_path / "keys.sqlite3", retention_h=1) as s:
        # `async with` gives an IdempotencyStore (its __aenter__ is not annotated with Self).
        db = cast(SqliteStore, s)._db  # the store's own connection: the limit applies to it only
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")

        async def fill() -> None:
            for i in range(200):  # until a page must be added
                await s.data_started(f"{i:0>500}")

        with pytest.raises(StoreUnavailable, match="full"):
            await fill()
        assert not db.in_transaction
        db.execute("PRAGMA max_page_count = 1073741823")
        await s.data_started("after")
        await s.accepted("after", message_id="<m@x>", smtp_code=250, sent_at_ms=1)
        assert State.ACCEPTED == (await s.claim("after")).state
