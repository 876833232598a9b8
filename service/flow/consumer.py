"""Consumption: records flow from the group into the pipeline, many at once, in key order, and
what they produce is committed with their offsets in one Kafka transaction.

- Up to `max_in_flight` records are processed at once, and up to `_UNCOMMITTED_PER_SLOT` times
  that many finished ones wait for their commit; past either, or while the SMTP breaker is open,
  the partitions are paused (not buffered) and resumed once half has drained. Polling goes on
  while paused, so `max.poll.interval.ms` is never tripped. Finished records used to count
  against `max_in_flight`: a lane then sent only its budget's worth of mail per commit cycle
  (the express lane, 32 per ~250 ms), whatever the SMTP server could take.
- Records with the same key in a partition run one after the other; others overlap.
- Every `commit_interval_ms`, the outcomes of each partition's finished prefix (never past an
  unfinished record) are written together with the offsets that follow them, in one transaction.
  The same happens for revoked partitions before they are released, and at shutdown.
- Retry-topic records wait for their not-before time: the partition is paused at that record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from service.errors import ProducerFenced, TransactionFailed
from service.flow.handler import Handled
from service.kafka.offsets import OffsetTracker
from service.kafka.records import Outbound, RawRecord
from service.kafka.transactions import TransactionalProducer
from service.logs import KAFKA_LOGGER
from service.metrics import Metrics
from service.outcomes.retries import RetryPolicy
from service.settings import KafkaSettings, ProcessingSettings

log = structlog.get_logger("herald.consumer")
T = TypeVar("T")
TP = tuple[str, int]
Handler = Callable[[RawRecord], Awaitable[Handled]]
_BATCH = 500
_UNCOMMITTED_PER_SLOT = 8
"""Finished records that may wait for a commit, per `max_in_flight`: a few commit intervals'
worth at full speed. Beyond it the commits are failing (results topic unavailable) and
consumption stops until they succeed. Half of it triggers a commit without waiting."""
_FULL_PAUSE_S = 1.0
"""How long the processing budget may stay full before the partitions are paused: until then
the consumer just stops polling, and librdkafka keeps what it has fetched."""
_POLL_S = 0.1
_WATCH_S = 1.0
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
"""Errors by which the consumer reports a broker it could not reach."""


class FatalConsumerError(Exception):
    """The consumer cannot go on (a bug in a handler, a fenced producer): exit non-zero."""


class Consumer:
    """A consumer-group member that feeds records to a handler and commits what is finished."""

    def __init__(
        self,
        kafka: KafkaSettings,
        processing: ProcessingSettings,
        topics: list[str],
        handler: Handler,
        producer: TransactionalProducer,
        retries: RetryPolicy,
        metrics: Metrics,
        should_pause: Callable[[], bool] = lambda: False,
        *,
        lane: str = "standard",
    ) -> None:
        """`lane` names this consumer in logs and metrics (an instance may run two, see app)."""
        self.lane = lane
        self._log = log.bind(lane=lane)
        self._in_flight = metrics.in_flight.labels(lane)
        self._paused_gauge = metrics.paused.labels(lane)
        self._transaction_seconds = metrics.transaction_seconds.labels(lane)
        self._consume_delay = metrics.consume_delay_seconds.labels(lane)
        self._kafka = kafka
        self._proc = processing
        self._max_uncommitted = _UNCOMMITTED_PER_SLOT * processing.max_in_flight
        self._room = asyncio.Event()
        self._full_since = time.monotonic()
        self._topics = topics
        self._handler = handler
        self.producer = producer
        self._retries = retries
        self._metrics = metrics
        self._should_pause = should_pause
        self._tracker = OffsetTracker()
        self._done: dict[TP, dict[int, list[Outbound]]] = {}
        """Records to write per finished offset, until their transaction commits."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[tuple[str, int, bytes], asyncio.Task[None]] = {}
        self._tp_tasks: dict[TP, set[asyncio.Task[None]]] = {}
        self._paused = False
        self._deferred: dict[TP, float] = {}
        """Retry partitions paused until their head record is due (monotonic time)."""
        self._assigned: set[TP] = set()
        self._epochs: dict[TP, int] = {}
        """Bumped whenever a partition is handed back: a record processed under an older
        epoch must not touch the bookkeeping of a later assignment of the same partition."""
        self._joined = False
        self._running = False
        self._fatal: BaseException | None = None
        self.counts: Counter[str] = Counter()
        """Outcome statuses and record totals, for the shutdown summary."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-consumer")
        self._commit_lock = asyncio.Lock()
        self._group: Any = None
        """Consumer group metadata for send_offsets_to_transaction, read on the consumer thread."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unreachable_at = time.monotonic()
        """When the consumer last failed to reach a broker (monotonic): before that, a silent
        transactional client may only be waiting for one."""
        self._consumer = confluent_kafka.Consumer(
            {
                # Incremental rebalances: a member joining (an instance's second lane, another
                # instance) takes partitions from the others without revoking all of them, so
                # in-flight mail elsewhere is not drained and handed back for nothing.
                "partition.assignment.strategy": "cooperative-sticky",
                **kafka.librdkafka(),
                "group.id": kafka.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                # Outcomes of a crashed transaction must not be read back by a redrive or a test.
                "isolation.level": "read_committed",
                "auto.offset.reset": kafka.auto_offset_reset,
                "session.timeout.ms": kafka.session_timeout_ms,
                "max.poll.interval.ms": kafka.max_poll_interval_ms,
                "statistics.interval.ms": kafka.statistics_interval_ms,
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                "logger": KAFKA_LOGGER,
            }
        )

    @property
    def ready(self) -> bool:
        """Running and past the first group join, so records will flow if there are any."""
        return self._running and self._joined

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain, commit and leave the group."""
        self._loop = asyncio.get_running_loop()
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self._running = True
        self._log.info("consuming", topics=self._topics, group=self._kafka.group_id)
        last_commit = time.monotonic()
        committing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set() and self._fatal is None:
                if len(self._tasks) >= self._proc.max_in_flight and not self._paused:
                    # Full, most often for a few ms: wait for room without polling. Pausing
                    # would cost more: a poll that sleeps its timeout before it sees the room,
                    # and librdkafka fetching the partitions' records again after the resume.
                    deadline = self._full_since + _FULL_PAUSE_S
                    if committing is None or committing.done():  # or the commit falls due
                        deadline = min(deadline, last_commit + self._proc.commit_interval_ms / 1000)
                    await self._room_or(deadline)
                room = min(_BATCH, self._proc.max_in_flight - len(self._tasks))
                messages = []
                if room > 0 or self._paused:  # paused: polled only to serve the group
                    messages = await self._call(self._consume, max(1, room))
                deferred_now: set[TP] = set()
                for m in messages:
                    self._accept(m, deferred_now)
                self._flow_control()
                since, every = time.monotonic() - last_commit, self._proc.commit_interval_ms / 1000
                due = since >= every or (
                    since >= every / 4 and self._uncommitted() >= self._max_uncommitted // 2
                )
                if due and (committing is None or committing.done()):
                    # In the background: a transaction waiting on a broker must not stop the
                    # polling (the group session) nor a SIGTERM from being heard.
                    committing = asyncio.create_task(self._commit())
                    last_commit = time.monotonic()
        finally:
            self._running = False
            if committing is not None:
                # A transaction stuck on the broker must not keep the process from stopping:
                # what it holds is simply consumed again, and deduplicated, after a restart.
                await asyncio.wait([committing], timeout=self._proc.shutdown_timeout_s)
            await self._shutdown()
        if self._fatal is not None:
            raise FatalConsumerError(str(self._fatal)) from self._fatal

    def _consume(self, room: int) -> list[Any]:
        """On the consumer thread: fetch, and note the group's metadata for transactions.

        The metadata is read here, never from the event loop: during a rebalance callback the
        consumer holds its lock, and a loop blocked on it could not run the callback's drain.
        """
        # poll() returns on the first record, consume(n, 0) then takes what is already there:
        # consume(n, timeout) alone would wait for n records or the whole timeout (latency).
        first = self._consumer.poll(_POLL_S)
        messages = [first] if first is not None else []
        if first is not None and room > 1:
            messages += self._consumer.consume(room - 1, 0)
        self._group = self._consumer.consumer_group_metadata()
        return messages

    def _accept(self, m: Any, deferred_now: set[TP]) -> None:
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                self._fatal = KafkaException(err)
            self._log.warning("consumer error", error=err.str(), code=err.name())
            return
        tp = (m.topic(), m.partition())
        if tp in deferred_now or tp not in self._assigned:
            return  # behind a record that is not due yet; it will be fetched again
        raw = RawRecord(
            topic=tp[0],
            partition=tp[1],
            offset=m.offset(),
            key=m.key(),
            value=m.value(),
            headers=tuple(m.headers() or ()),
            timestamp_ms=m.timestamp()[1] if m.timestamp()[0] else None,
        )
        if self._retries.is_retry_topic(raw.topic):
            wait_s = (self._retries.not_before_ms(raw) - time.time() * 1000) / 1000
            if wait_s > 0:
                self._defer(tp, raw.offset, wait_s)
                deferred_now.add(tp)
                return
        elif raw.timestamp_ms is not None:
            self._consume_delay.observe(max(0.0, time.time() - raw.timestamp_ms / 1000))
        self._tracker.track(tp, raw.offset)
        self._in_flight.inc()
        prev = self._tails.get((*tp, raw.key)) if raw.key is not None else None
        epoch = self._epochs.get(tp, 0)
        task = asyncio.create_task(self._process(raw, prev, epoch))
        self._tasks.add(task)
        self._tp_tasks.setdefault(tp, set()).add(task)
        if raw.key is not None:
            self._tails[(*tp, raw.key)] = task
        task.add_done_callback(lambda t: self._finished(t, raw, epoch))

    def _defer(self, tp: TP, offset: int, wait_s: float) -> None:
        """Rewind a retry partition to a record not yet due and pause it until it is."""
        part = TopicPartition(tp[0], tp[1], offset)
        self._consumer.pause([part])
        self._consumer.seek(part)
        self._deferred[tp] = time.monotonic() + wait_s

    async def _process(self, raw: RawRecord, prev: asyncio.Task[None] | None, epoch: int) -> None:
        if prev is not None:
            await asyncio.wait([prev])  # same key: keep the producer's order
        handled = await self._handler(raw)
        tp = (raw.topic, raw.partition)
        if self._epochs.get(tp, 0) != epoch:
            return  # handed back meanwhile: the new owner processes it again
        self._done.setdefault(tp, {})[raw.offset] = handled.records
        self.counts["records"] += 1
        self.counts.update(s.lower() for s in handled.statuses)

    def _finished(self, task: asyncio.Task[None], raw: RawRecord, epoch: int) -> None:
        tp = (raw.topic, raw.partition)
        self._tasks.discard(task)
        self._tp_tasks.get(tp, set()).discard(task)
        if raw.key is not None and self._tails.get((*tp, raw.key)) is task:
            del self._tails[(*tp, raw.key)]
        self._in_flight.dec()
        self._room.set()
        if task.cancelled():
            return  # shutdown gave up on it: not done, so never committed
        exc = task.exception()
        if exc is not None:
            # The pipeline turns every expected failure into an outcome; this is a bug.
            self._log.error("record handler crashed", error=repr(exc), exc_info=exc)
            self._fatal = exc
            return
        if self._epochs.get(tp, 0) == epoch:
            self._tracker.done(tp, raw.offset)

    async def _room_or(self, deadline: float) -> None:
        """Until a record finishes, or `deadline` (monotonic)."""
        self._room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._room.wait(), max(0.0, deadline - time.monotonic()))

    def _uncommitted(self) -> int:
        return sum(len(d) for d in self._done.values())

    def _flow_control(self) -> None:
        now = time.monotonic()
        for tp, due in list(self._deferred.items()):
            if due <= now:
                del self._deferred[tp]
                if not self._paused and tp in self._assigned:
                    self._consumer.resume([TopicPartition(*tp)])
        n, waiting = len(self._tasks), self._uncommitted()
        limit, most = self._proc.max_in_flight, self._max_uncommitted
        hold = self._should_pause()
        if n < limit:
            self._full_since = now
        full_for_long = now - self._full_since >= _FULL_PAUSE_S
        if not self._paused and (full_for_long or waiting >= most or hold):
            self._set_paused(True, in_flight=n, uncommitted=waiting, breaker=hold)
        elif self._paused and n <= limit // 2 and waiting <= most // 2 and not hold:
            self._set_paused(False, in_flight=n, uncommitted=waiting, breaker=hold)

    def _set_paused(self, paused: bool, **why: object) -> None:
        tps = [tp for tp in list(self._assigned) if paused or tp not in self._deferred]
        parts = [TopicPartition(t, p) for t, p in tps]
        if parts:
            (self._consumer.pause if paused else self._consumer.resume)(parts)
        self._paused = paused
        self._paused_gauge.set(1 if paused else 0)
        self._log.info("consumption paused" if paused else "consumption resumed", **why)

    async def _commit(self, tps: list[TP] | None = None) -> None:
        """Write the finished prefix's records and its offsets in one transaction.

        Bookkeeping happens here on the event loop; only the blocking transaction runs on the
        transaction thread. One commit at a time: a second must see what the first settled,
        or it would write the same outcomes again.
        """
        async with self._commit_lock:
            await self._commit_locked(tps)

    async def _commit_locked(self, tps: list[TP] | None) -> None:
        positions = self._tracker.committable(tps)
        if not positions:
            return
        records: list[Outbound] = []
        for tp, pos in positions.items():
            done = self._done.get(tp, {})
            for offset in sorted(o for o in done if o < pos):
                records.extend(done[offset])
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        group = self._group
        self._log.debug("committing", records=len(records), offsets=len(offsets))
        began = time.perf_counter()
        try:
            producer = self.producer
            call = asyncio.ensure_future(
                _on_daemon_thread(producer.commit, records, offsets, group)
            )
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
                    self.producer = await _on_daemon_thread(producer.fresh)
                    return
            call.result()
        except TransactionFailed as exc:
            self._transaction_seconds.observe(time.perf_counter() - began)
            self._metrics.transactions.labels("aborted").inc()
            self._log.warning("transaction aborted; outcomes and offsets held back", error=str(exc))
            return
        except ProducerFenced as exc:
            self._fatal = exc
            return
        self._transaction_seconds.observe(time.perf_counter() - began)
        self._metrics.transactions.labels("committed").inc()
        self._tracker.committed(positions)
        for tp, pos in positions.items():
            done = self._done.get(tp, {})
            for offset in [o for o in done if o < pos]:
                del done[offset]

    def _stuck(self, producer: TransactionalProducer) -> bool:
        """Silent for longer than any call may take; or, with the brokers reachable all that
        time, for longer than any call takes then (finding 8 in docs/reliability.md)."""
        silent_s = producer.stalled_s
        reachable_s = time.monotonic() - self._unreachable_at
        return silent_s > producer.stuck_after_s or (
            min(silent_s, reachable_s) > producer.stuck_reachable_after_s
        )

    # Rebalance callbacks run on the consumer thread, inside consume() or close().

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._joined = True
        self._assigned.update((p.topic, p.partition) for p in partitions)
        if partitions:
            # librdkafka keeps a partition's pause flag across assignments: one paused before it
            # was lost would come back paused for ever unless set here, either way.
            (consumer.pause if self._paused else consumer.resume)(partitions)
        self._log.info("partitions assigned", partitions=_names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        assert self._loop is not None
        self._group = consumer.consumer_group_metadata()  # this generation, still ours
        waiting = asyncio.run_coroutine_threadsafe(self._hand_back(tps, commit=True), self._loop)
        waiting.result()
        self._log.info("partitions revoked", partitions=_names(partitions))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: someone else may own them already, so commit nothing."""
        tps = [(p.topic, p.partition) for p in partitions]
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._hand_back(tps, commit=False), self._loop).result()
        self._log.warning(
            "partitions lost; their uncommitted records will be redelivered",
            partitions=_names(partitions),
        )

    async def _hand_back(self, tps: list[TP], *, commit: bool) -> None:
        """Finish (within the deadline) and commit what these partitions hold, then forget them."""
        if commit:
            tasks = set().union(*(self._tp_tasks.get(tp, set()) for tp in tps))
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=self._proc.shutdown_timeout_s)
                if pending:
                    # Stop them before the partitions go: the new owner must not race them to
                    # SMTP. One cut inside DATA stays "in DATA" and is reported UNKNOWN there.
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending, timeout=5)
                    self._log.warning(
                        "revoked partitions not drained in time; their records will be redelivered",
                        in_flight=len(pending),
                    )
            await self._commit(tps)
        self._tracker.forget(tps)
        for tp in tps:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
            self._done.pop(tp, None)
            self._deferred.pop(tp, None)
            with contextlib.suppress(KeyError):  # never reported, or already gone
                self._metrics.consumer_lag.remove(tp[0], str(tp[1]))
        self._assigned.difference_update(tps)

    async def _shutdown(self) -> None:
        if self._tasks:
            self._log.info("draining", in_flight=len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._proc.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                self._log.warning(
                    "shutdown deadline passed; records handed back", count=len(pending)
                )
        if self._fatal is None and not self._commit_lock.locked():
            await self._commit()
        await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)

    def _on_stats(self, stats_json: str) -> None:
        """Lag = last stable offset - committed position. librdkafka's own `consumer_lag`
        stays unknown here: offsets are committed through the producer's transactions."""
        stats = json.loads(stats_json)
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                if pid == "-1" or (topic, int(pid)) not in self._assigned:
                    continue
                end = p.get("ls_offset", -1)
                committed = self._tracker.position((topic, int(pid)))
                if committed is None:
                    committed = p.get("committed_offset", -1)
                if committed is None or committed < 0:
                    committed = p.get("lo_offset", -1)
                if end >= 0 and committed >= 0:
                    self._metrics.consumer_lag.labels(topic, pid).set(max(0, end - committed))

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _UNREACHABLE:
            self._unreachable_at = time.monotonic()
        self._log.warning("kafka client error", error=err.str(), code=err.name())


async def _on_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
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


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
