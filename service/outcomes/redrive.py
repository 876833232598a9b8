"""Redrive: dead-lettered records go back to the topic they came from, once their cause is
fixed. The idempotency store makes this safe: a notification already accepted by SMTP ends
DEDUPLICATED instead of being sent again.

Progress is committed in a consumer group of its own (`<group_id>-redrive`), so a record is
redriven once however often the command runs; `--from-beginning` starts over.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from service.errors import HeraldError
from service.kafka.records import RawRecord
from service.logs import KAFKA_LOGGER
from service.outcomes.records import HEADER_PREFIX, foreign_headers
from service.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which dead letters to redrive; empty fields select everything."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, meta: dict[str, str]) -> bool:
        if self.reasons and meta.get("reason") not in self.reasons:
            return False
        failed_ms = int(meta.get("failed_at_ms", "0"))
        if self.since and failed_ms < self.since.timestamp() * 1000:
            return False
        return not (self.until and failed_ms >= self.until.timestamp() * 1000)


@dataclass(slots=True)
class Report:
    redriven: Counter[str] = field(default_factory=Counter)
    """By reason."""
    skipped: int = 0
    unroutable: int = 0
    """Dead letters without a source topic header (not written by Herald)."""


def redrive(
    settings: Settings,
    selection: Selection,
    *,
    dry_run: bool = False,
    from_beginning: bool = False,
    timeout_s: float = 30.0,
) -> Report:
    """Re-publish the selected dead letters up to the end of the topic as it is now."""
    k = settings.kafka
    dlq = k.topic_prefix + k.dead_letter_topic
    group = (
        f"{k.group_id}-redrive" if not from_beginning else f"{k.group_id}-redrive-{uuid.uuid4()}"
    )
    consumer = confluent_kafka.Consumer(
        {
            **k.librdkafka(),
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "logger": KAFKA_LOGGER,
        }
    )
    producer = confluent_kafka.Producer(
        {
            **k.librdkafka(),
            "enable.idempotence": True,
            "acks": "all",
            "logger": KAFKA_LOGGER,
        }
    )
    report = Report()
    try:
        ends = _end_offsets(consumer, dlq, timeout_s)
        starts = _start_offsets(consumer, dlq, ends, timeout_s)
        remaining = {p for p, end in ends.items() if starts[p] < end}
        consumer.subscribe([dlq])
        deadline = time.monotonic() + timeout_s
        # Transaction markers occupy offsets but are never delivered: progress is measured by
        # the consumer's position, which moves past them, not by the last message seen.
        while remaining:
            if time.monotonic() > deadline:
                raise HeraldError(f"could not read {dlq} to its end within {timeout_s} s")
            m = consumer.poll(0.2)
            if m is not None and m.error() is None and _before(m, ends):
                _one(m, selection, producer, report, dry_run)
            for tp in consumer.position([TopicPartition(dlq, p) for p in remaining]):
                if tp.offset >= ends[tp.partition]:
                    remaining.discard(tp.partition)
        if not dry_run:
            if producer.flush(timeout_s):
                raise HeraldError("redriven records were not acknowledged; nothing committed")
            offsets = [
                tp
                for tp in consumer.position([TopicPartition(dlq, p) for p in ends])
                if tp.offset >= 0
            ]
            if offsets:
                consumer.commit(offsets=offsets, asynchronous=False)
    finally:
        consumer.close()
    return report


def _before(m: Any, ends: dict[int, int]) -> bool:
    """Was the record there when the run started? Later ones wait for the next run."""
    return bool(m.offset() < ends.get(m.partition(), 0))


def _one(m: Any, selection: Selection, producer: Any, report: Report, dry_run: bool) -> None:
    headers = tuple(m.headers() or ())
    meta = {
        k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace")
        for k, v in headers
        if k.startswith(HEADER_PREFIX)
    }
    if not selection.matches(meta):
        report.skipped += 1
        return
    target = meta.get("source.topic")
    if not target:
        report.unroutable += 1
        return
    report.redriven[meta.get("reason", "unknown")] += 1
    if dry_run:
        return
    raw = RawRecord(
        topic=m.topic(),
        partition=m.partition(),
        offset=m.offset(),
        key=m.key(),
        value=m.value(),
        headers=headers,
    )
    producer.produce(target, raw.value, raw.key, headers=list(foreign_headers(raw)))
    producer.poll(0)


def _start_offsets(
    consumer: Any, topic: str, ends: dict[int, int], timeout_s: float
) -> dict[int, int]:
    """Where this group resumes: its committed offset, else the start of the partition."""
    committed = consumer.committed([TopicPartition(topic, p) for p in ends], timeout=timeout_s)
    out = {}
    for tp in committed:
        low = consumer.get_watermark_offsets(
            TopicPartition(topic, tp.partition), timeout=timeout_s
        )[0]
        out[tp.partition] = tp.offset if tp.offset >= 0 else low
    return out


def _end_offsets(consumer: Any, topic: str, timeout_s: float) -> dict[int, int]:
    meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None:
        return {}
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)[1]
        for p in meta.partitions
    }
