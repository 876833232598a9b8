"""The transactional producer against a topic that takes no writes for a while, on a broker of
the test's own: a partition with a replica on a stopped broker and `min.insync.replicas=2`
answers NOT_ENOUGH_REPLICAS, which the producer and the broker's marker writer both retry.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import confluent_kafka
import pytest

from service.errors import TransactionFailed
from service.kafka.records import Outbound
from service.kafka.transactions import TransactionalProducer
from tests.chaos.infra import (
    DedicatedBroker,
    client,
    create_topics,
    dedicated_broker,
    set_topic_config,
)

TIMEOUT_MS = 2000
INIT_DEADLINE_S = 2.0
OUTAGE_S = 25.0
"""Longer than the renewal (~9 s) plus one init_transactions call (10 s) and the deadline."""


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DedicatedBroker]:
    needs = "this test needs a broker of its own (deploy/kafka/broker.sh) to add a stopped node to"
    with dedicated_broker(tmp_path / "kafka", needs) as broker:
        yield broker


def _read_committed(bootstrap: str, topic: str) -> list[bytes]:
    c = confluent_kafka.Consumer(
        client(
            bootstrap,
            **{
                "group.id": f"read-{uuid.uuid4().hex[:8]}",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            },
        )
    )
    values: list[bytes] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error() is not None:
                code = cast(confluent_kafka.KafkaError, m.error()).code()  # not None: see above
                if code == confluent_kafka.KafkaError._PARTITION_EOF:
                    return values
                continue
            values.append(cast(bytes, m.value()))  # the test writes no record without one
        raise AssertionError(f"{topic}: no end of partition within 30 s")
    finally:
        c.close()


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_transaction_held_up_by_the_broker_is_waited_for_not_given_up(
    broker: DedicatedBroker,
) -> None:
    """While the broker cannot finish aborting the last transaction (CONCURRENT_TRANSACTIONS,
    for longer than the init deadline), the producer waits rather than report itself fenced;
    once the topic takes writes again the same producer commits, and the record is there once."""
    offline = broker.register_stopped_broker()
    topic = "held-up"
    create_topics(broker.bootstrap, {topic: 1}, replicas={topic: [[1, offline]]})
    producer = TransactionalProducer(
        client(broker.bootstrap), "held-up-tx", TIMEOUT_MS, init_deadline_s=INIT_DEADLINE_S
    )
    producer.init()
    record = Outbound(topic=topic, key=b"k", value=b"outcome")
    set_topic_config(broker.bootstrap, topic, "min.insync.replicas", "2")
    restore = threading.Timer(
        OUTAGE_S, set_topic_config, args=(broker.bootstrap, topic, "min.insync.replicas", None)
    )
    began = time.monotonic()
    restore.start()
    try:
        with pytest.raises(TransactionFailed):
            producer.commit([record], [], None)
        held_s = time.monotonic() - began
    finally:
        restore.join()
    producer.commit([record], [], None)
    producer.close()

    assert held_s > OUTAGE_S, "gave up on the transaction before the topic came back"
    assert [b"outcome"] == _read_committed(broker.bootstrap, topic)
