"""Transactions from asyncio: each commit runs on a daemon thread, watched for a client stuck
inside librdkafka, which is then replaced by a new one with the same transactional id."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from confluent_kafka import TopicPartition

from service.errors import ProducerFenced, TransactionFailed
from service.kafka.records import Outbound
from service.kafka.records import TopicPartition as TP
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics

log = structlog.get_logger("herald.kafka")
T = TypeVar("T")
_WATCH_S = 1.0


class Committed(StrEnum):
    """How a commit ended."""

    COMMITTED = "committed"
    """Records written and offsets moved."""
    ABORTED = "aborted"
    """Nothing visible; the same records go again in the next commit."""
    RENEWED = "renewed"
    """The client was stuck and replaced; nothing visible, the records go again."""
    FENCED = "fenced"
    """Another instance owns the transactional id: this one must stop."""


class Committer:
    """One lane's transactions: records and offsets, all or nothing."""

    def __init__(
        self,
        producer: TransactionalProducer,
        metrics: Metrics,
        *,
        lane: str,
        unreachable_at: Callable[[], float],
    ) -> None:
        """`unreachable_at`: when a broker last could not be reached (monotonic)."""
        self.producer = producer
        """The current client; a stuck one is replaced here."""
        self._log = log.bind(lane=lane)
        self._metrics = metrics
        self._seconds = metrics.transaction_seconds.labels(lane)
        self._unreachable_at = unreachable_at
        self.fatal_error = ""
        """What ended this lane's transactions, once a commit came back FENCED."""

    async def commit(
        self, records: Sequence[Outbound], positions: dict[TP, int], group: Any
    ) -> Committed:
        """Write `records` and move the group to `positions`, on a thread of their own."""
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        self._log.debug("committing", records=len(records), offsets=len(offsets))
        began = time.perf_counter()
        producer = self.producer
        call = asyncio.ensure_future(on_daemon_thread(producer.commit, records, offsets, group))
        try:
            # Watched, not timed: a commit waiting for a partition to take writes again gets
            # an answer from librdkafka every few seconds and may rightly last minutes. Only
            # a call that does not return is stuck.
            while not call.done():
                await asyncio.wait([call], timeout=min(_WATCH_S, producer.stuck_after_s / 4))
                if not call.done() and self._stuck(producer):
                    # Seen after a broker restart: send_offsets_to_transaction never returning.
                    # Leave that client to its thread; a new one fences it and takes over.
                    self._log.warning("transaction stuck; starting a new transactional client")
                    self._metrics.transactions.labels("aborted").inc()
                    call.add_done_callback(_abandoned)
                    self.producer = await on_daemon_thread(producer.fresh)
                    return Committed.RENEWED
            call.result()
        except TransactionFailed as exc:
            self._seconds.observe(time.perf_counter() - began)
            self._metrics.transactions.labels("aborted").inc()
            self._log.warning("transaction aborted; outcomes and offsets held back", error=str(exc))
            return Committed.ABORTED
        except ProducerFenced as exc:
            self._log.error("producer fenced", error=str(exc))
            self.fatal_error = str(exc)
            return Committed.FENCED
        self._seconds.observe(time.perf_counter() - began)
        self._metrics.transactions.labels("committed").inc()
        return Committed.COMMITTED

    def _stuck(self, producer: TransactionalProducer) -> bool:
        """Silent for longer than any call may take; or, with the brokers reachable all that
        time, for longer than any call takes then (finding 8 in docs/reliability.md)."""
        silent_s = producer.stalled_s
        reachable_s = time.monotonic() - self._unreachable_at()
        return silent_s > producer.stuck_after_s or (
            min(silent_s, reachable_s) > producer.stuck_reachable_after_s
        )

    def close(self) -> None:
        self.producer.close()


async def on_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call on a daemon thread: unlike an executor's, it cannot hold up the
    process's exit when the call is stuck on an unreachable broker."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(*args), None
        except BaseException as exc:  # handed over to the awaiting coroutine
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="herald-txn", daemon=True).start()
    return await done


def _abandoned(call: asyncio.Future[None]) -> None:
    """A commit left to its thread ends in an error nobody waits for any more: take it."""
    if not call.cancelled():
        call.exception()
