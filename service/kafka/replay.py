"""Reading a topic once, up to its end as it is now, in a consumer group of its own; and
writing records back with an idempotent producer. Tools use it (redrive), never the flow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from service.errors import HeraldError
from service.kafka.records import Outbound, RawRecord, consumed
from service.logs import KAFKA_LOGGER


class Replay:
    """The records of `topic` after the group's committed position, up to today's end."""

    def __init__(self, conf: dict[str, Any], topic: str, group: str, timeout_s: float) -> None:
        self._topic = topic
        self._timeout_s = timeout_s
        self._consumer = confluent_kafka.Consumer(
            {
                **conf,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "logger": KAFKA_LOGGER,
            }
        )
        self._ends: dict[int, int] = {}

    def records(self) -> Iterator[RawRecord]:
        """Each record once; raises HeraldError if the end is not reached in time."""
        c, topic = self._consumer, self._topic
        self._ends = self._end_offsets()
        starts = self._start_offsets()
        remaining = {p for p, end in self._ends.items() if starts[p] < end}
        c.subscribe([topic])
        deadline = time.monotonic() + self._timeout_s
        # Transaction markers occupy offsets but are never delivered: progress is measured by
        # the consumer's position, which moves past them, not by the last message seen.
        while remaining:
            if time.monotonic() > deadline:
                raise HeraldError(f"could not read {topic} to its end within {self._timeout_s} s")
            m: Any = c.poll(0.2)
            if m is not None and m.error() is None:
                raw = consumed(m)
                if raw.offset < self._ends.get(raw.partition, 0):  # later ones: the next run
                    yield raw
            for tp in c.position([TopicPartition(topic, p) for p in remaining]):
                if tp.offset >= self._ends[tp.partition]:
                    remaining.discard(tp.partition)

    def commit(self) -> None:
        """Remember how far this group has read, so the next run starts there."""
        positions = self._consumer.position([TopicPartition(self._topic, p) for p in self._ends])
        offsets = [tp for tp in positions if tp.offset >= 0]
        if offsets:
            self._consumer.commit(offsets=offsets, asynchronous=False)

    def close(self) -> None:
        self._consumer.close()

    def _start_offsets(self) -> dict[int, int]:
        """Where this group resumes: its committed offset, else the start of the partition."""
        c, topic = self._consumer, self._topic
        committed = c.committed(
            [TopicPartition(topic, p) for p in self._ends], timeout=self._timeout_s
        )
        out = {}
        for tp in committed:
            low = c.get_watermark_offsets(
                TopicPartition(topic, tp.partition), timeout=self._timeout_s
            )[0]
            out[tp.partition] = tp.offset if tp.offset >= 0 else low
        return out

    def _end_offsets(self) -> dict[int, int]:
        c, topic = self._consumer, self._topic
        meta = c.list_topics(topic, timeout=self._timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=self._timeout_s)[1]
            for p in meta.partitions
        }


class Publisher:
    """Plain idempotent writes, acknowledged by `flush`."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self._producer = confluent_kafka.Producer(
            {**conf, "enable.idempotence": True, "acks": "all", "logger": KAFKA_LOGGER}
        )

    def publish(self, record: Outbound) -> None:
        self._producer.produce(record.topic, record.value, record.key, headers=list(record.headers))
        self._producer.poll(0)

    def flush(self, timeout_s: float) -> None:
        """Raises HeraldError if some records are still unacknowledged after `timeout_s`."""
        if self._producer.flush(timeout_s):
            raise HeraldError("records were not acknowledged by Kafka in time")
