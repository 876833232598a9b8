"""The consumer's watch over a commit in progress: a client that keeps answering is waited for,
however long the commit takes; one that goes silent inside a call is replaced. And its flow
control: what pauses consumption and what resumes it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from service.flow.consumer import Consumer
from service.flow.handler import Handled
from service.kafka.records import Outbound, RawRecord
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics
from service.outcomes.retries import RetryPolicy
from service.settings import KafkaSettings, ProcessingSettings, RetrySettings

STUCK_AFTER_S = 0.4
STUCK_REACHABLE_AFTER_S = 0.2
TP = ("events", 0)


class Idle:
    """A confluent-kafka producer that has nothing to say."""

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


async def _never(raw: RawRecord) -> Handled:
    raise AssertionError("no record is consumed here")


@pytest.fixture
def make_consumer() -> Iterator[Any]:
    made: list[Consumer] = []

    def build(
        producer: TransactionalProducer, processing: ProcessingSettings | None = None
    ) -> Consumer:
        consumer = Consumer(
            KafkaSettings(bootstrap_servers="127.0.0.1:1"),
            processing or ProcessingSettings(),
            [TP[0]],
            _never,
            producer,
            RetryPolicy(RetrySettings()),
            Metrics(),
        )
        # One finished record, owed a commit.
        consumer._tracker.track(TP, 0)
        consumer._tracker.done(TP, 0)
        consumer._done[TP] = {0: []}
        made.append(consumer)
        return consumer

    yield build
    for consumer in made:
        consumer._consumer.close()


async def test_a_long_commit_whose_client_keeps_answering_is_waited_for(make_consumer: Any) -> None:
    """Three times the stuck threshold, with answers throughout: the same client commits."""
    producer = SlowCommit(3 * STUCK_AFTER_S, answering=True)
    consumer = make_consumer(producer)

    await consumer._commit()

    assert consumer.producer is producer
    assert 1 == producer.commits
    assert 1 == consumer._tracker.position(TP)


async def test_a_commit_silent_past_the_threshold_gets_a_new_client(make_consumer: Any) -> None:
    """No call returning for longer than the threshold: a new client takes over, nothing is
    marked committed."""
    producer = SlowCommit(3 * STUCK_AFTER_S, answering=False)
    consumer = make_consumer(producer)

    await consumer._commit()

    assert consumer.producer is not producer
    assert consumer._tracker.position(TP) is None


async def test_a_silent_client_with_the_broker_reachable_is_replaced_sooner(
    make_consumer: Any,
) -> None:
    """Silent past the shorter threshold while no broker was unreachable: replaced before the
    longer one, so that a replacement caught the same way still leaves time for a third."""
    producer = SlowCommit(0.3, answering=False)  # between the two thresholds
    consumer = make_consumer(producer)
    consumer._unreachable_at = time.monotonic() - 10

    await consumer._commit()

    assert consumer.producer is not producer
    assert consumer._tracker.position(TP) is None


async def test_a_silent_client_while_brokers_are_unreachable_is_waited_for(
    make_consumer: Any,
) -> None:
    """Silent past the shorter threshold while the consumer cannot reach a broker: the client
    may only be waiting for it (librdkafka retries until the transaction timeout), so it is
    left alone until the longer one."""
    producer = SlowCommit(0.3, answering=False)
    consumer = make_consumer(producer)
    down = KafkaError(KafkaError._TRANSPORT, "Connect to 127.0.0.1:9092 failed")

    async def broker_down() -> None:
        while True:
            consumer._on_error(down)
            await asyncio.sleep(0.05)

    reporting = asyncio.create_task(broker_down())
    try:
        await consumer._commit()
    finally:
        reporting.cancel()

    assert consumer.producer is producer
    assert 1 == producer.commits
    assert 1 == consumer._tracker.position(TP)


def test_records_awaiting_their_commit_do_not_use_the_processing_budget(
    make_consumer: Any,
) -> None:
    """Finished records waiting for the next transaction no longer count against
    `max_in_flight` (a lane used to send only its budget per commit cycle); a pile of them as
    large as 8x the budget still pauses, as when commits keep failing. A full budget pauses
    only once it has stayed full for a second."""
    consumer = make_consumer(SlowCommit(0, answering=True), ProcessingSettings(max_in_flight=4))

    def state(processing: int, finished: int, full_for_s: float = 0) -> bool:
        consumer._tasks = {object() for _ in range(processing)}  # type: ignore[misc]
        consumer._done = {TP: {offset: [] for offset in range(finished)}}
        if full_for_s:
            consumer._full_since = time.monotonic() - full_for_s
        consumer._flow_control()
        return consumer._paused

    assert not state(3, 12)  # 12 finished (3x the budget), 3 at work: room for one more
    assert not state(4, 12)  # the budget is used: polling stops, partitions stay fetched
    assert not state(4, 12, full_for_s=0.5)
    assert state(4, 12, full_for_s=1.0)  # full for a second: paused
    assert state(3, 12)  # not yet back to half
    assert not state(2, 12)
    assert state(0, 32)  # 8 x 4 finished and not committed: commits are failing
    assert state(0, 17)
    assert not state(0, 16)
