"""The confluent-kafka producer side: every write Herald makes goes through one transaction
with the consumer offsets it settles (KIP-98, KIP-447), so read_committed readers of the results
topic see each outcome once, and never one whose record will be processed again.

Calls block, so they run on a thread the caller chooses; a lock keeps one transaction at a time
(the periodic commit and a rebalance callback may both want one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from service.errors import ProducerFenced, TransactionFailed
from service.kafka.records import Outbound
from service.logs import KAFKA_LOGGER

log = structlog.get_logger("herald.kafka")
_ABORT_BACKOFF_S = 0.25
_BROKER_BUSY = frozenset(
    {
        KafkaError.CONCURRENT_TRANSACTIONS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.NOT_COORDINATOR,
    }
)
"""Answers to init_transactions that mean the broker is busy with the id, not refusing it."""
_CALL_S = 5
"""Timeout of each transactional call; init_transactions gets twice as long."""


class TransactionalProducer:
    """One transaction at a time; renews the underlying client when one cannot be settled.

    A broker restart can leave librdkafka's transaction neither committable nor abortable
    within any useful time. Rather than wait on it, the client is closed and a new one is
    started with the same transactional id: `init_transactions` then aborts whatever the old
    one left open (KIP-98), and the records go again in the next transaction.

    A partition that takes no writes for a while (below `min.insync.replicas`) is different:
    every call keeps answering, with retriable errors, until the broker can finish the
    transaction, so the producer goes on asking rather than giving up (`stalled_s` tells the
    two apart for the consumer's watch).
    """

    def __init__(
        self,
        conf: dict[str, Any],
        transactional_id: str,
        timeout_ms: int,
        *,
        init_deadline_s: float = 60.0,
        client: Callable[[dict[str, Any]], Any] = confluent_kafka.Producer,
    ) -> None:
        """`client` makes the confluent-kafka producer (tests pass a scripted one)."""
        self._conf = {
            **conf,
            "transactional.id": transactional_id,
            "transaction.timeout.ms": timeout_ms,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "logger": KAFKA_LOGGER,
        }
        self._timeout_s = timeout_ms / 1000
        # Bounded so a stuck transaction is noticed well before the broker would expire it.
        self._settle_s = min(self._timeout_s, 20.0)
        self._init_deadline_s = init_deadline_s
        self._client = client
        self._producer = client(self._conf)
        self._lock = threading.Lock()
        self._returned_at = time.monotonic()
        self.abandoned = False
        """Set once `fresh()` has replaced this client. A call stuck in it may still return
        with an error later; it must not renew the client then, or the new client's
        init_transactions would fence the replacement (seen after a broker restart: Herald
        exited at its next commit)."""

    def init(self) -> None:
        """Register the transactional id, aborting whatever a previous incarnation left open.

        CONCURRENT_TRANSACTIONS means the broker is still completing this id's previous
        transaction: its markers cannot be written yet, e.g. while a partition it wrote to is
        below `min.insync.replicas`. A coordinator that is not available cannot append to its
        own log (the transaction-state topic below its minimum of in-sync replicas). The
        broker gets over both by itself and no client can hurry it, so they are waited for
        however long it takes (finding 11 in docs/reliability.md). Other retriable errors
        give up after `init_deadline_s`.
        """
        began = time.monotonic()
        deadline = began + self._init_deadline_s
        while True:
            try:
                self._producer.init_transactions(2 * _CALL_S)
                self._returned()
                return
            except KafkaException as exc:
                self._returned()
                err = exc.args[0]
                if err.code() in _BROKER_BUSY:
                    deadline = time.monotonic() + self._init_deadline_s
                if err.fatal() or not err.retriable() or time.monotonic() > deadline:
                    raise ProducerFenced(f"init_transactions failed: {err.str()}") from exc
                log.warning(
                    "init_transactions failed; trying again",
                    error=err.str(),
                    waited_s=round(time.monotonic() - began, 1),
                )

    def commit(
        self, records: Sequence[Outbound], offsets: list[TopicPartition], group: Any
    ) -> None:
        """Write `records` and move the group's `offsets`, all or nothing.

        librdkafka's rules: a *retriable* error means the same call must be made again, the
        transaction is still open; one that *requires abort* means abort and start over; a
        *fatal* one ends the client. When neither commit nor abort settles in time, the
        client is renewed. Raises TransactionFailed when nothing was committed.
        """
        with self._lock:
            p = self._producer
            self._returned()
            committing = False
            try:
                p.begin_transaction()
                for r in records:
                    self._produce(r)
                if offsets:
                    self._again(
                        lambda: p.send_offsets_to_transaction(offsets, group, _CALL_S),
                        self._settle_s,
                    )
                committing = True
                # A commit waiting on a partition that takes no writes (below
                # min.insync.replicas, no leader) settles by itself: librdkafka caps
                # message.timeout.ms at transaction.timeout.ms, and a message that times out
                # makes the transaction abortable. Until then it refuses an abort ("commit_
                # transaction API call is already in progress"), so the commit is resumed.
                self._again(lambda: p.commit_transaction(_CALL_S), self._timeout_s + self._settle_s)
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal() and "fenced" in err.str().lower():
                    raise ProducerFenced(f"producer fenced: {err.str()}") from exc
                unsettled = committing and not err.txn_requires_abort()
                if self.abandoned:
                    pass  # replaced meanwhile: renewing would fence the replacement
                elif err.fatal() or unsettled or not self._abort():
                    self._renew(err.str())
                raise TransactionFailed(f"transaction not committed: {err.str()}") from exc

    @property
    def stalled_s(self) -> float:
        """How long since a librdkafka call of this client last returned, with or without
        an error: a long silence means a call stuck inside librdkafka."""
        return time.monotonic() - self._returned_at

    def _returned(self) -> None:
        self._returned_at = time.monotonic()

    def _again(self, call: Any, settle_s: float) -> None:
        """Repeat a retriable transactional call until it succeeds or `settle_s` is up."""
        deadline = time.monotonic() + settle_s
        while True:
            try:
                call()
                self._returned()
                return
            except KafkaException as exc:
                self._returned()
                err = exc.args[0]
                if not err.retriable() or err.txn_requires_abort() or time.monotonic() > deadline:
                    raise
                log.warning("transaction call failed; trying again", error=err.str())

    def _produce(self, r: Outbound) -> None:
        while True:
            try:
                self._producer.produce(r.topic, r.value, r.key, headers=list(r.headers))
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: serve delivery reports
                self._returned()

    def _abort(self) -> bool:
        """Abort the open transaction; False if it could not be settled in time."""
        deadline = time.monotonic() + self._settle_s
        while True:
            try:
                self._producer.abort_transaction(_CALL_S)
                self._returned()
                return True
            except KafkaException as exc:
                self._returned()
                err = exc.args[0]
                if err.fatal() or time.monotonic() > deadline:
                    return False
                if not err.retriable():
                    return True  # no transaction in progress: nothing to abort
                time.sleep(_ABORT_BACKOFF_S)  # some refusals come back at once

    def fresh(self) -> TransactionalProducer:
        """A new client with the same transactional id, initialised; leaves this one alone,
        which may be stuck inside a call (init_transactions fences it)."""
        other = TransactionalProducer.__new__(TransactionalProducer)
        other._conf, other._timeout_s, other._settle_s = self._conf, self._timeout_s, self._settle_s
        other._init_deadline_s, other._client = self._init_deadline_s, self._client
        other._producer = self._client(self._conf)
        other._lock = threading.Lock()
        other._returned_at = time.monotonic()
        other.abandoned = False
        self.abandoned = True
        other.init()
        return other

    @property
    def stuck_after_s(self) -> float:
        """A commit during which no call has returned for this long (three times the longest
        timeout a call is given) is stuck inside librdkafka, timeouts notwithstanding.

        While no broker can be reached, a call may rightly take up to `transaction.timeout.ms`
        (librdkafka retries its request until then): this bound holds whatever the brokers do.
        """
        return 3 * 2 * _CALL_S

    @property
    def stuck_reachable_after_s(self) -> float:
        """The same with the brokers reachable throughout: then every call answers within
        its own timeout (the longest is 2 * _CALL_S), so twice that is enough. After a broker
        restart, a call can stop answering for good (librdkafka #5456, #5511; finding 8), and
        the replacement may be caught the same way: each one must cost little."""
        return 2 * 2 * _CALL_S

    def _renew(self, why: str) -> None:
        log.warning("transactional producer renewed", reason=why)
        old, self._producer = self._producer, self._client(self._conf)
        old.purge()
        # Closed on a thread of its own: close() finishes the abort left open, which can wait
        # as long as the broker cannot write the markers. The new client's init_transactions
        # fences it meanwhile.
        threading.Thread(target=_close, args=(old,), name="herald-txn-close", daemon=True).start()
        self.init()

    def close(self) -> None:
        """Flush and close, unless a transaction is stuck on the broker: then leave it to the
        broker's transaction timeout rather than hang the process's exit."""
        if not self._lock.acquire(timeout=5):
            log.warning("transaction still in progress at close; left to the broker to abort")
            return
        try:
            for step in (lambda: self._producer.flush(self._settle_s), self._producer.close):
                try:
                    step()
                except KafkaException as exc:  # fenced or fatal: nothing of ours is left
                    log.warning("transactional producer closed with an error", error=str(exc))
        finally:
            self._lock.release()


def _close(client: Any) -> None:
    """Close a client that was given up on; what it reports is of no interest."""
    try:
        client.close()
    except Exception as exc:  # e.g. RuntimeWarning raised as an error: its abort failed
        log.debug("replaced transactional client closed with an error", error=str(exc))
