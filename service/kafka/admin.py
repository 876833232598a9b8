"""Topic administration: create the topics Herald reads and writes, where they are missing."""

from __future__ import annotations

from collections.abc import Mapping

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from service.errors import HeraldError
from service.settings import Settings

COMPACTED: Mapping[str, str] = {"cleanup.policy": "compact"}
"""Topic config of Herald's state topics: compaction keeps the latest record of each key."""


def ensure_topics(
    conf: dict[str, str | int | float | bool],
    topics: list[str],
    *,
    partitions: int = 3,
    timeout_s: float = 30.0,
    config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create the missing ones (with this topic `config`); returns those created. Existing
    topics are left as they are."""
    admin = AdminClient(conf)
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=partitions, replication_factor=-1, config=dict(config or {}))
            for t in missing
        ],
        operation_timeout=timeout_s,
    )
    for topic, fut in futures.items():
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise HeraldError(f"cannot create topic {topic}: {exc}") from exc
    return missing


def state_topics(settings: Settings) -> list[str]:
    """Herald's compacted state topics: preferences and suppressions, with the topic prefix."""
    k, p = settings.kafka, settings.policy
    return [k.topic_prefix + p.preferences_topic, k.topic_prefix + p.suppressions_topic]


def ensure_state_topics(settings: Settings, *, timeout_s: float = 30.0) -> list[str]:
    """Create the missing state topics, compacted; returns those created."""
    k = settings.kafka
    return ensure_topics(
        k.librdkafka(),
        state_topics(settings),
        partitions=k.own_topic_partitions,
        timeout_s=timeout_s,
        config=COMPACTED,
    )
