"""Topic administration: create the topics Herald reads and writes, where they are missing."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from service.errors import HeraldError


def ensure_topics(
    conf: dict[str, str | int | float | bool],
    topics: list[str],
    *,
    partitions: int = 3,
    timeout_s: float = 30.0,
    config: dict[str, str] | None = None,
) -> list[str]:
    """Create the missing ones, with `config` (e.g. cleanup.policy=compact); returns those
    created. Existing topics are left as they are."""
    admin = AdminClient(conf)
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [t for t in topics if t not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=partitions, replication_factor=-1, config=config or {})
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
