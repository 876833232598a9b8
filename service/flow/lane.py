"""A lane: records flow from the group to the handler, many at once, in key order, and what
they produce is committed with their offsets in one Kafka transaction.

- Up to `max_in_flight` records are processed at once, and up to `_UNCOMMITTED_PER_SLOT` times
  that many finished ones wait for their commit; past either, or while a stage holds (the SMTP
  breaker is open), the partitions are paused (not buffered) and resumed once half has drained.
  Polling goes on while paused, so `max.poll.interval.ms` is never tripped. Finished records
  do not count against `max_in_flight`, so a lane sends as much mail per commit cycle as the
  relay takes.
- Records with the same key in a partition run one after the other; others overlap.
- Every `commit_interval_ms`, the outcomes of each partition's finished prefix (never past an
  unfinished record) are written together with the offsets that follow them, in one transaction.
  The same happens for revoked partitions before they are released, and at shutdown.
- Retry-topic records wait for their not-before time: the partition is paused at that record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from enum import StrEnum
from typing import Any, Protocol

import structlog

from service.errors import ConsumerFailed
from service.flow.handler import Handled
from service.flow.loop_time import LoopTime
from service.kafka.client import GroupClient
from service.kafka.committer import Committed, Committer
from service.kafka.offsets import OffsetTracker
from service.kafka.records import Outbound, RawRecord
from service.kafka.records import TopicPartition as TP
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics
from service.outcomes.retries import RetryPolicy
from service.settings import KafkaSettings, ProcessingSettings

log = structlog.get_logger("herald.flow")
Handler = Callable[[RawRecord], Coroutine[Any, Any, Handled]]
_BATCH = 500
_UNCOMMITTED_PER_SLOT = 8
"""Finished records that may wait for a commit, per `max_in_flight`: a few commit intervals'
worth at full speed. Beyond it the commits are failing (results topic unavailable) and
consumption stops until they succeed. Half of it triggers a commit without waiting."""
HELD_S = 0.1
"""A record holding the loop longer than this at once is logged: every other record waited."""
_FULL_PAUSE_S = 1.0
"""How long the processing budget may stay full before the partitions are paused: until then
the lane just stops polling, and librdkafka keeps what it has fetched."""


class Hold(Protocol):
    """A stage that wants consumption paused for now (the SMTP pool, while its breaker is open)."""

    @property
    def holding(self) -> bool: ...


class LaneState(StrEnum):
    """created → joining → running → draining → stopped, or → failed from joining or running."""

    CREATED = "created"
    JOINING = "joining"
    """Subscribed; no partitions assigned yet."""
    RUNNING = "running"
    """Past the first assignment: records flow if there are any."""
    DRAINING = "draining"
    """Stop asked: no more polling; in-flight records finish and are committed."""
    STOPPED = "stopped"
    FAILED = "failed"
    """A fatal condition (fenced producer, fatal consumer error): the process must exit."""


class Lane:
    """One consumer-group member that feeds records to the handler and commits what is done."""

    def __init__(
        self,
        kafka: KafkaSettings,
        processing: ProcessingSettings,
        topics: list[str],
        handler: Handler,
        producer: TransactionalProducer,
        retries: RetryPolicy,
        metrics: Metrics,
        holds: Sequence[Hold] = (),
        *,
        lane: str = "standard",
    ) -> None:
        """`lane` names this member in logs and metrics (an instance runs several, see app)."""
        self.lane = lane
        self.state = LaneState.CREATED
        self._log = log.bind(lane=lane)
        self._in_flight = metrics.in_flight.labels(lane)
        self._paused_gauge = metrics.paused.labels(lane)
        self._consume_delay = metrics.consume_delay_seconds.labels(lane)
        self._loop_seconds = metrics.record_loop_seconds.labels(lane)
        self._group_id = kafka.group_id
        self._proc = processing
        self._max_uncommitted = _UNCOMMITTED_PER_SLOT * processing.max_in_flight
        self._room = asyncio.Event()
        self._full_since = time.monotonic()
        self._topics = topics
        self._handler = handler
        self._retries = retries
        self._holds = tuple(holds)
        self._tracker = OffsetTracker()
        self._client = GroupClient(kafka, metrics, lane=lane, position=self._tracker.position)
        self.committer = Committer(
            producer, metrics, lane=lane, unreachable_at=lambda: self._client.unreachable_at
        )
        self._done: dict[TP, dict[int, list[Outbound]]] = {}
        """Records to write per finished offset, until their transaction commits."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[tuple[str, int, bytes], asyncio.Task[None]] = {}
        self._tp_tasks: dict[TP, set[asyncio.Task[None]]] = {}
        self._deferred: dict[TP, float] = {}
        """Retry partitions paused until their head record is due (monotonic time)."""
        self._epochs: dict[TP, int] = {}
        """Bumped whenever a partition is handed back: a record processed under an older
        epoch must not touch the bookkeeping of a later assignment of the same partition."""
        self._fatal: BaseException | None = None
        self.counts: Counter[str] = Counter()
        """Outcome statuses and record totals, for the shutdown summary."""
        self._commit_lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Running and past the first group join, so records will flow if there are any."""
        return self.state is LaneState.RUNNING

    @property
    def assigned(self) -> frozenset[TP]:
        """The partitions this lane holds now."""
        return frozenset(self._client.assigned)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain, commit and leave the group."""
        self._client.subscribe(
            self._topics, assigned=self._assigned, revoked=self._revoked, lost=self._lost
        )
        self.state = LaneState.JOINING
        self._log.info("consuming", topics=self._topics, group=self._group_id)
        try:
            await self._loop(stop)
        finally:
            self.state = LaneState.FAILED if self._fatal is not None else LaneState.DRAINING
            await self._shutdown()
        if self._fatal is not None:
            raise ConsumerFailed(str(self._fatal)) from self._fatal
        self.state = LaneState.STOPPED

    async def _loop(self, stop: asyncio.Event) -> None:
        last_commit = time.monotonic()
        committing: asyncio.Task[None] | None = None
        try:
            while not stop.is_set() and self._fatal is None:
                if len(self._tasks) >= self._proc.max_in_flight and not self._client.paused:
                    # Full, most often for a few ms: wait for room without polling. Pausing
                    # would cost more: a poll that sleeps its timeout before it sees the room,
                    # and librdkafka fetching the partitions' records again after the resume.
                    deadline = self._full_since + _FULL_PAUSE_S
                    if committing is None or committing.done():  # or the commit falls due
                        deadline = min(deadline, last_commit + self._proc.commit_interval_ms / 1000)
                    await self._room_or(deadline)
                await self._take()
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
            if committing is not None:
                # A transaction stuck on the broker must not keep the process from stopping:
                # what it holds is simply consumed again, and deduplicated, after a restart.
                await asyncio.wait([committing], timeout=self._proc.shutdown_timeout_s)

    async def _take(self) -> None:
        """Poll what there is room for (or only to serve the group, while paused)."""
        room = min(_BATCH, self._proc.max_in_flight - len(self._tasks))
        if room <= 0 and not self._client.paused:
            return
        try:
            records = await self._client.poll(max(1, room))
        except ConsumerFailed as exc:
            self._fatal = exc
            return
        deferred_now: set[TP] = set()
        for raw in records:
            self._accept(raw, deferred_now)

    def _accept(self, raw: RawRecord, deferred_now: set[TP]) -> None:
        tp = (raw.topic, raw.partition)
        if tp in deferred_now:
            return  # behind a record that is not due yet; it will be fetched again
        if self._retries.is_retry_topic(raw.topic):
            wait_s = (self._retries.not_before_ms(raw) - time.time() * 1000) / 1000
            if wait_s > 0:
                # Back to that record, paused until it is due.
                self._client.rewind(tp, raw.offset)
                self._deferred[tp] = time.monotonic() + wait_s
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

    async def _process(self, raw: RawRecord, prev: asyncio.Task[None] | None, epoch: int) -> None:
        if prev is not None:
            await asyncio.wait([prev])  # same key: keep the producer's order
        timed = LoopTime(self._handler(raw))
        handled = await timed
        self._loop_seconds.observe(timed.seconds)
        if timed.longest > HELD_S:
            self._log.warning(
                "record held the event loop",
                topic=raw.topic,
                partition=raw.partition,
                offset=raw.offset,
                longest_ms=round(timed.longest * 1000, 1),
                total_ms=round(timed.seconds * 1000, 1),
            )
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
            # The handler turns every expected failure into an outcome; this is a bug.
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
                if not self._client.paused and tp in self._client.assigned:
                    self._client.resume([tp])
        n, waiting = len(self._tasks), self._uncommitted()
        limit, most = self._proc.max_in_flight, self._max_uncommitted
        hold = any(h.holding for h in self._holds)
        if n < limit:
            self._full_since = now
        full_for_long = now - self._full_since >= _FULL_PAUSE_S
        if not self._client.paused and (full_for_long or waiting >= most or hold):
            self._set_paused(True, in_flight=n, uncommitted=waiting, held=hold)
        elif self._client.paused and n <= limit // 2 and waiting <= most // 2 and not hold:
            self._set_paused(False, in_flight=n, uncommitted=waiting, held=hold)

    def _set_paused(self, paused: bool, **why: object) -> None:
        tps = [tp for tp in list(self._client.assigned) if paused or tp not in self._deferred]
        (self._client.pause if paused else self._client.resume)(tps)
        self._client.paused = paused
        self._paused_gauge.set(1 if paused else 0)
        self._log.info("consumption paused" if paused else "consumption resumed", **why)

    async def _commit(self, tps: list[TP] | None = None) -> None:
        """Write the finished prefix's records and its offsets in one transaction.

        Bookkeeping happens here on the event loop; only the blocking transaction runs on the
        transaction thread. One commit at a time: a second must see what the first settled,
        or it would write the same outcomes again.
        """
        async with self._commit_lock:
            positions = self._tracker.committable(tps)
            if not positions:
                return
            records: list[Outbound] = []
            for tp, pos in positions.items():
                done = self._done.get(tp, {})
                for offset in sorted(o for o in done if o < pos):
                    records.extend(done[offset])
            result = await self.committer.commit(records, positions, self._client.group)
            if result is Committed.FENCED:
                self._fatal = ConsumerFailed(
                    f"transactions cannot go on: {self.committer.fatal_error}"
                )
            if result is not Committed.COMMITTED:
                return
            self._tracker.committed(positions)
            for tp, pos in positions.items():
                done = self._done.get(tp, {})
                for offset in [o for o in done if o < pos]:
                    del done[offset]

    # Partitions moving: called by the client from its rebalance callbacks.

    async def _assigned(self, tps: list[TP]) -> None:
        if self.state is LaneState.JOINING:
            self.state = LaneState.RUNNING

    async def _revoked(self, tps: list[TP]) -> None:
        """Finish (within the deadline) and commit what these partitions hold, then forget."""
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
        self._forget(tps)

    async def _lost(self, tps: list[TP]) -> None:
        """Lost, not revoked: someone else may own them already, so nothing is committed."""
        self._forget(tps)

    def _forget(self, tps: list[TP]) -> None:
        self._tracker.forget(tps)
        for tp in tps:
            self._epochs[tp] = self._epochs.get(tp, 0) + 1
            self._done.pop(tp, None)
            self._deferred.pop(tp, None)

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
        await self._client.close()
