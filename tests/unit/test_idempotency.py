"""The idempotency store, on both backends: SQLite (embedded) and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.idempotency import IdempotencyStore, RedisStore, SqliteStore, State


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
    from tests.smtp_server import free_port

    async with RedisStore(f"redis://127.0.0.1:{free_port()}/0", retention_h=1) as s:
        with pytest.raises(StoreUnavailable):
            await s.claim("k")


async def test_redis_calls_beyond_the_pool_wait_for_a_connection(redis_url: str) -> None:
    """More records in flight than connections: the extra calls queue, none is 'unavailable'."""
    async with RedisStore(redis_url, retention_h=1, connections=4) as s:
        keys = [f"pool-{i}" for i in range(200)]
        priors = await asyncio.gather(*(s.claim(k) for k in keys))
        assert [p.state for p in priors] == [State.NEW] * len(keys)
        again = await asyncio.gather(*(s.claim(k) for k in keys))
        assert {p.state for p in again} == {State.CLAIMED}
