"""A compacted topic followed into a local table on a thread: restored first, then kept up.

Like a Kafka Streams global table: every partition is assigned (no group membership, no
commits) and read from the beginning. The table counts as restored once each partition has
reached its end (librdkafka's partition EOF); after that, records keep being applied as they
arrive. Nothing here blocks the event loop.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, TopicPartition

from service.stores.tables import Change

log = structlog.get_logger("herald.tables")
_BATCH = 500
_POLL_S = 0.2
_LAG_EVERY_S = 5.0


class Follower:
    """Keeps one table in step with one topic; `restored` is set when it first caught up."""

    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        apply: Callable[[Sequence[Change]], int],
        *,
        on_lag: Callable[[int], None] = lambda lag: None,
        on_refused: Callable[[int], None] = lambda n: None,
    ) -> None:
        """`conf`: librdkafka settings of the cluster; `apply` returns the records it refused."""
        self.topic = topic
        self.restored = threading.Event()
        self.restore_seconds: float | None = None
        self.failure: str | None = None
        self._conf = {
            **conf,
            # librdkafka wants a group id even for assigned partitions; nothing is committed.
            "group.id": f"herald-table-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
        self._apply = apply
        self._on_lag = on_lag
        self._on_refused = on_refused
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"herald-table-{topic}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        began = time.monotonic()
        consumer = confluent_kafka.Consumer(self._conf)
        try:
            partitions = self._partitions(consumer)
            if partitions is None:
                return
            consumer.assign(
                [
                    TopicPartition(self.topic, p, confluent_kafka.OFFSET_BEGINNING)
                    for p in partitions
                ]
            )
            at_end: set[int] = set()
            next_lag = 0.0
            while not self._stop.is_set():
                changes: list[Change] = []
                for m in consumer.consume(_BATCH, _POLL_S):
                    err = m.error()
                    if err is None:
                        changes.append((m.key() or b"", m.value()))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(m.partition() or 0)
                    else:
                        log.warning("table topic error", topic=self.topic, error=err.str())
                if changes:
                    refused = self._apply(changes)
                    if refused:
                        self._on_refused(refused)
                if not self.restored.is_set() and at_end >= set(partitions):
                    self.restore_seconds = time.monotonic() - began
                    self.restored.set()
                    log.info("table restored", topic=self.topic, seconds=self.restore_seconds)
                if time.monotonic() >= next_lag:
                    self._on_lag(_lag(consumer, self.topic, partitions))
                    next_lag = time.monotonic() + _LAG_EVERY_S
        except Exception as exc:  # the thread must say why it ended; readiness reads it
            self.failure = f"{type(exc).__name__}: {exc}"
            log.error("table follower failed", topic=self.topic, error=self.failure)
        finally:
            consumer.close()

    def _partitions(self, consumer: Any) -> list[int] | None:
        """The topic's partitions, waiting while it does not exist yet."""
        while not self._stop.is_set():
            meta = consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
            if meta is not None and meta.error is None and meta.partitions:
                return sorted(meta.partitions)
            log.warning("table topic not available yet", topic=self.topic)
            self._stop.wait(1.0)
        return None


def _lag(consumer: Any, topic: str, partitions: list[int]) -> int:
    """Records on the topic not applied yet, summed over its partitions."""
    total = 0
    positions = consumer.position([TopicPartition(topic, p) for p in partitions])
    for tp in positions:
        _, high = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
        if tp.offset >= 0:
            total += max(0, high - tp.offset)
        else:
            low, _ = consumer.get_watermark_offsets(tp, timeout=5, cached=False)
            total += max(0, high - low)
    return total
