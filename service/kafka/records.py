"""The adapter's values: a record as consumed, and a record to produce."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TopicPartition = tuple[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class RawRecord:
    """A consumed Kafka record, before anything is assumed about its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Outbound:
    """A record Herald writes: an outcome, a dead letter or a retry."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


def consumed(m: Any) -> RawRecord:
    """A confluent-kafka `Message` without an error, as a `RawRecord`."""
    kind, ts = m.timestamp()
    return RawRecord(
        topic=m.topic(),
        partition=m.partition(),
        offset=m.offset(),
        key=m.key(),
        value=m.value(),
        headers=tuple(m.headers() or ()),
        timestamp_ms=ts if kind else None,
    )
