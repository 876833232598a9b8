"""The watch over a commit in progress: a client that keeps answering is waited for, however
long the commit takes; one that goes silent inside a call is replaced."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import TopicPartition

from service.kafka.committer import Committed, Committer
from service.kafka.records import Outbound
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics

STUCK_AFTER_S = 0.4
STUCK_REACHABLE_AFTER_S = 0.2
TP = ("events", 0)


class Idle:
    """A confluent-kafka producer that has nothing to say (a fault no broker gives on demand)."""

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf

    def init_transactions(self, timeout: float) -> None:
        pass


class SlowCommit(TransactionalProducer):
    """Commits after `commit_s`; meanwhile its client answers every 50 ms, or says nothing."""

    def __init__(self, commit_s: float, *, answering: bool) -> None:
        super().__init__({}, "tid", 1000, client=Idle)
        self.commit_s = commit_s
        self.answering = answering
        self.commits = 0

    def commit(
        self, records: Sequence[Outbound], offsets: list[TopicPartition], group: Any
    ) -> None:
        self._returned()
        deadline = time.monotonic() + self.commit_s
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.answering:
                self._returned()  # e.g. commit_transaction timing out, resumed
        self.commits += 1

    @property
    def stuck_after_s(self) -> float:
        return STUCK_AFTER_S

    @property
    def stuck_reachable_after_s(self) -> float:
        return STUCK_REACHABLE_AFTER_S


def _committer(producer: TransactionalProducer, unreachable_s_ago: float = 0) -> Committer:
    at = time.monotonic() - unreachable_s_ago
    return Committer(producer, Metrics(), lane="test", unreachable_at=lambda: at)


async def test_a_long_commit_whose_client_keeps_answering_is_waited_for() -> None:
    """Three times the stuck threshold, with answers throughout: the same client commits."""
    producer = SlowCommit(3 * STUCK_AFTER_S, answering=True)
    committer = _committer(producer)

    assert Committed.COMMITTED == await committer.commit([], {TP: 1}, None)
    assert committer.producer is producer
    assert 1 == producer.commits


async def test_a_commit_silent_past_the_threshold_gets_a_new_client() -> None:
    """No call returning for longer than the threshold: a new client takes over, and the
    commit counts as not made."""
    producer = SlowCommit(3 * STUCK_AFTER_S, answering=False)
    committer = _committer(producer)

    assert Committed.RENEWED == await committer.commit([], {TP: 1}, None)
    assert committer.producer is not producer
    assert producer.abandoned


async def test_a_silent_client_with_the_broker_reachable_is_replaced_sooner() -> None:
    """Silent past the shorter threshold while no broker was unreachable: replaced before the
    longer one, so that a replacement caught the same way still leaves time for a third."""
    producer = SlowCommit(0.3, answering=False)  # between the two thresholds
    committer = _committer(producer, unreachable_s_ago=10)

    assert Committed.RENEWED == await committer.commit([], {TP: 1}, None)
    assert committer.producer is not producer


async def test_a_silent_client_while_brokers_are_unreachable_is_waited_for() -> None:
    """Silent past the shorter threshold while the consumer cannot reach a broker: the client
    may only be waiting for it (librdkafka retries until the transaction timeout), so it is
    left alone until the longer one."""
    producer = SlowCommit(0.3, answering=False)
    committer = Committer(producer, Metrics(), lane="test", unreachable_at=time.monotonic)

    assert Committed.COMMITTED == await committer.commit([], {TP: 1}, None)
    assert committer.producer is producer
    assert 1 == producer.commits
