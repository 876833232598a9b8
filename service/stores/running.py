"""The policy stage's stores, opened for a running service: topics, tables, followers, caps.

Opening creates the compacted topics if missing, empties the local tables, and returns only
once both are restored from their topics: the lanes, and with them /readyz, start after that.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from service.errors import HeraldError
from service.events.schemas import SchemaStore
from service.kafka.admin import ensure_state_topics, state_topics
from service.metrics import Metrics
from service.settings import Settings
from service.stores.caps import CapStore, RedisCaps, SqliteCaps
from service.stores.codec import StateCodec
from service.stores.consent import PREFERENCE_SCHEMA, PreferenceCodec
from service.stores.follower import Follower
from service.stores.suppressions import SUPPRESSION_SCHEMA, SuppressionCodec
from service.stores.tables import PolicyTables

log = structlog.get_logger("herald.policy")
_ROWS_EVERY_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class LiveStores:
    """The local tables as their followers keep them, and the caps."""

    tables: PolicyTables
    caps: CapStore
    followers: tuple[Follower, ...]

    @property
    def healthy(self) -> bool:
        """False once a follower has stopped: its table stops following the topic there."""
        return all(f.failure is None for f in self.followers)


def codecs(schemas: SchemaStore) -> tuple[PreferenceCodec, SuppressionCodec]:
    return (
        PreferenceCodec(StateCodec(schemas, PREFERENCE_SCHEMA)),
        SuppressionCodec(StateCodec(schemas, SUPPRESSION_SCHEMA)),
    )


def open_tables(settings: Settings, schemas: SchemaStore) -> PolicyTables:
    preferences, suppressions = codecs(schemas)
    return PolicyTables(settings.policy.state_path, preferences, suppressions)


def open_caps(settings: Settings) -> CapStore:
    if settings.policy.caps_backend == "redis":
        return RedisCaps(settings.idempotency.redis_url.get_secret_value())
    return SqliteCaps(settings.policy.state_path.with_suffix(".caps.sqlite3"))


@contextlib.asynccontextmanager
async def running_stores(
    settings: Settings, schemas: SchemaStore, metrics: Metrics
) -> AsyncIterator[LiveStores]:
    """The stores, the tables restored from the topics; followed until the block ends."""
    k = settings.kafka
    preferences_topic, suppressions_topic = state_topics(settings)
    await asyncio.to_thread(ensure_state_topics, settings)
    tables = open_tables(settings, schemas)
    tables.clear()
    followers = tuple(
        Follower(
            k.librdkafka(),
            topic,
            apply,
            on_lag=metrics.policy_table_lag.labels(name).set,
            on_refused=metrics.policy_table_refused.labels(name).inc,
        )
        for name, topic, apply in (
            ("preferences", preferences_topic, tables.apply_preferences),
            ("suppressions", suppressions_topic, tables.apply_suppressions),
        )
    )
    caps = open_caps(settings)
    rows: asyncio.Task[None] | None = None
    try:
        for f in followers:
            f.start()
        await _restored(followers, settings.policy.restore_timeout_s, metrics)
        rows = asyncio.create_task(_count_rows(tables, metrics))
        yield LiveStores(tables=tables, caps=caps, followers=followers)
    finally:
        if rows is not None:
            rows.cancel()
        await asyncio.gather(*(asyncio.to_thread(f.stop) for f in followers))
        await caps.close()
        tables.close()


async def _restored(followers: tuple[Follower, ...], timeout_s: float, metrics: Metrics) -> None:
    """Wait until every table has caught up with its topic; HeraldError past the timeout."""
    names = ("preferences", "suppressions")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for name, f in zip(names, followers, strict=True):
        while not f.restored.is_set():
            if f.failure is not None:
                raise HeraldError(f"the {name} table could not be restored: {f.failure}")
            if loop.time() > deadline:
                raise HeraldError(
                    f"the {name} table was not restored from {f.topic} in {timeout_s:.0f} s: "
                    "is the topic readable? (HERALD_POLICY__RESTORE_TIMEOUT_S)"
                )
            await asyncio.sleep(0.05)
        metrics.policy_table_restore_seconds.labels(name).set(f.restore_seconds or 0.0)
        log.info("policy table restored", table=name, seconds=round(f.restore_seconds or 0, 2))


async def _count_rows(tables: PolicyTables, metrics: Metrics) -> None:
    while True:
        for name, n in tables.sizes().items():
            metrics.policy_table_rows.labels(name).set(n)
        await asyncio.sleep(_ROWS_EVERY_S)
