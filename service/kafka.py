"""The confluent-kafka producer side: every write Herald makes goes through one transaction
with the consumer offsets it settles (KIP-98, KIP-447), so read_committed readers of the results
topic see each outcome once, and never one whose record will be processed again.

Calls block, so they run on a thread the caller chooses; a lock keeps one transaction at a time
(the periodic commit and a rebalance callback may both want one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaException, TopicPartition

from service.errors import ProducerFenced, TransactionFailed
from service.logs import KAFKA_LOGGER


@dataclass(frozen=True, slots=True, kw_only=True)
class Outbound:
    """A record Herald writes: an outcome, a dead letter or a retry."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


class TransactionalProducer:
    def __init__(self, conf: dict[str, Any], transactional_id: str, timeout_ms: int) -> None:
        self._timeout_s = timeout_ms / 1000
        self._producer = confluent_kafka.Producer(
            {
                **conf,
                "transactional.id": transactional_id,
                "transaction.timeout.ms": timeout_ms,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "logger": KAFKA_LOGGER,
            }
        )
        self._lock = threading.Lock()

    def init(self) -> None:
        """Register the transactional id, aborting whatever a previous incarnation left open."""
        try:
            self._producer.init_transactions(self._timeout_s)
        except KafkaException as exc:
            raise ProducerFenced(f"init_transactions failed: {exc}") from exc

    def commit(
        self, records: Sequence[Outbound], offsets: list[TopicPartition], group: Any
    ) -> None:
        """Write `records` and move the group's `offsets`, all or nothing."""
        with self._lock:
            p = self._producer
            try:
                p.begin_transaction()
                for r in records:
                    self._produce(r)
                if offsets:
                    p.send_offsets_to_transaction(offsets, group, self._timeout_s)
                p.commit_transaction(self._timeout_s)
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise ProducerFenced(f"fatal producer error: {err.str()}") from exc
                self._abort()
                raise TransactionFailed(f"transaction aborted: {err.str()}") from exc

    def _produce(self, r: Outbound) -> None:
        while True:
            try:
                self._producer.produce(r.topic, r.value, r.key, headers=list(r.headers))
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve delivery reports

    def _abort(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                self._producer.abort_transaction(max(1.0, deadline - time.monotonic()))
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal() or time.monotonic() > deadline:
                    raise ProducerFenced(f"abort failed: {err.str()}") from exc
                if not err.retriable():
                    return  # no transaction in progress: nothing to abort
                time.sleep(0.2)

    def close(self) -> None:
        with self._lock:
            self._producer.flush(self._timeout_s)
            self._producer.close()
