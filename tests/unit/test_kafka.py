"""The transactional producer's decisions, on a scripted confluent-kafka client: what it waits
for, what it resumes, when it gives a client up."""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException

from service.errors import ProducerFenced, TransactionFailed
from service.kafka.records import Outbound
from service.kafka.transactions import TransactionalProducer

TIMEOUT_MS = 1000
"""transaction.timeout.ms: commits are resumed for 2 s (timeout + settle), aborts for 1 s."""
CALL_S = 0.1
"""How long each scripted call takes before it answers."""


def _error(code: int, *, retriable: bool = False, abort: bool = False) -> KafkaException:
    return KafkaException(
        KafkaError(code, "scripted", retriable=retriable, txn_requires_abort=abort)
    )


CONCURRENT = _error(KafkaError.CONCURRENT_TRANSACTIONS, retriable=True)
NO_COORDINATOR = _error(KafkaError.COORDINATOR_NOT_AVAILABLE, retriable=True)
TIMED_OUT = _error(KafkaError._TIMED_OUT, retriable=True)
CONFLICT = _error(KafkaError._CONFLICT, retriable=True)


class Scripted:
    """A confluent-kafka producer whose transactional calls answer from a script: each
    listed exception is raised once, in order, then every call succeeds (or raises the
    `forever` exception of that call)."""

    made: ClassVar[list[Scripted]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.calls: list[str] = []
        self.script: dict[str, list[KafkaException]] = {}
        self.forever: dict[str, KafkaException] = {}
        Scripted.made.append(self)

    def _answer(self, name: str) -> None:
        self.calls.append(name)
        time.sleep(CALL_S)
        queued = self.script.get(name)
        if queued:
            raise queued.pop(0)
        if name in self.forever:
            raise self.forever[name]

    def init_transactions(self, timeout: float) -> None:
        self._answer("init_transactions")

    def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")

    def produce(self, topic: str, value: bytes | None, key: bytes | None, **kw: Any) -> None:
        self.calls.append("produce")

    def send_offsets_to_transaction(self, offsets: Any, group: Any, timeout: float) -> None:
        self._answer("send_offsets_to_transaction")

    def commit_transaction(self, timeout: float) -> None:
        self._answer("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self._answer("abort_transaction")

    def purge(self) -> None:
        self.calls.append("purge")

    def flush(self, timeout: float) -> int:
        self._answer("flush")
        return 0

    def close(self) -> None:
        self.calls.append("close")


@pytest.fixture(autouse=True)
def _fresh_registry() -> None:
    Scripted.made = []


def _producer() -> tuple[TransactionalProducer, Scripted]:
    producer = TransactionalProducer({}, "tid", TIMEOUT_MS, init_deadline_s=0.3, client=Scripted)
    return producer, Scripted.made[0]


RECORD = Outbound(topic="results", key=b"k", value=b"v")


def test_init_waits_while_the_broker_completes_the_previous_transaction() -> None:
    """CONCURRENT_TRANSACTIONS for longer than the init deadline: waited out, not fenced."""
    producer, client = _producer()
    client.script["init_transactions"] = [CONCURRENT] * 8  # 0.8 s > 0.3 s

    producer.init()

    assert 9 == client.calls.count("init_transactions")


def test_init_gives_up_on_other_retriable_errors_after_its_deadline() -> None:
    """A request timing out for longer than the init deadline: reported, not waited for."""
    producer, client = _producer()
    client.forever["init_transactions"] = TIMED_OUT

    with pytest.raises(ProducerFenced):
        producer.init()

    assert client.calls.count("init_transactions") <= 5


def test_init_waits_while_the_coordinator_is_not_available() -> None:
    """COORDINATOR_NOT_AVAILABLE past the init deadline is waited out (finding 11)."""
    producer, client = _producer()
    client.script["init_transactions"] = [NO_COORDINATOR] * 6  # 0.6 s > 0.3 s

    producer.init()

    assert 7 == client.calls.count("init_transactions")


def test_a_commit_waiting_on_a_partition_is_resumed_not_aborted() -> None:
    """commit_transaction timing out for longer than an abort would be given: resumed until it
    commits; librdkafka refuses an abort while a commit is in progress."""
    producer, client = _producer()
    client.script["commit_transaction"] = [TIMED_OUT] * 15  # 1.5 s, within timeout + settle
    client.forever["abort_transaction"] = CONFLICT

    producer.commit([RECORD], [], None)

    assert 16 == client.calls.count("commit_transaction")
    assert 0 == client.calls.count("abort_transaction")
    assert 1 == len(Scripted.made)


def test_a_commit_that_never_settles_renews_the_client_without_trying_to_abort() -> None:
    """Still in progress at the deadline: a new client fences it; no abort is tried, since
    librdkafka would refuse it for as long as the commit is in progress."""
    producer, client = _producer()
    client.forever["commit_transaction"] = TIMED_OUT
    client.forever["abort_transaction"] = CONFLICT

    with pytest.raises(TransactionFailed):
        producer.commit([RECORD], [], None)

    assert 0 == client.calls.count("abort_transaction")
    assert 2 == len(Scripted.made)
    assert ["init_transactions"] == Scripted.made[1].calls


def test_an_abort_refused_at_once_is_retried_with_a_pause() -> None:
    """An abort answered at once with a retriable error is not retried in a busy loop."""
    producer, client = _producer()
    client.script["commit_transaction"] = [_error(KafkaError._TIMED_OUT, abort=True)]
    client.forever["abort_transaction"] = CONFLICT

    with pytest.raises(TransactionFailed):
        producer.commit([RECORD], [], None)

    # 1 s of settling at (0.1 s per call + 0.25 s pause) is 3 or 4 attempts, not hundreds.
    assert client.calls.count("abort_transaction") <= 4
    assert 2 == len(Scripted.made)


def test_a_replaced_client_whose_stuck_call_fails_does_not_fence_its_replacement() -> None:
    """The consumer gave this client up for stuck and made a fresh one (same transactional
    id). When the stuck commit finally fails, renewing would init a third client and fence
    the fresh one: Herald then exited at its next commit (CI, broker restart scenario)."""
    producer, client = _producer()
    replacement = producer.fresh()
    client.forever["commit_transaction"] = TIMED_OUT

    with pytest.raises(TransactionFailed):
        producer.commit([RECORD], [], None)

    assert 2 == len(Scripted.made)  # the original and the replacement, no third
    assert ["init_transactions"] == Scripted.made[1].calls
    assert not replacement.abandoned


def test_closing_a_fenced_client_does_not_raise() -> None:
    """At shutdown a client already fenced reports it on flush; the process still exits 0."""
    producer, client = _producer()
    client.forever["flush"] = KafkaException(
        KafkaError(KafkaError._FENCED, "fenced by a newer instance", fatal=True)
    )

    producer.close()

    assert "close" in client.calls
