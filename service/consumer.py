"""Consumption: records flow from the group into the pipeline, many at once, in key order.

- Up to `max_in_flight` records are processed concurrently; past that the assigned partitions
  are paused (not buffered) and resumed when half the work has drained. Polling goes on while
  paused, so `max.poll.interval.ms` is never tripped.
- Records with the same key in a partition run one after the other; others overlap.
- Offsets are committed up to the lowest unfinished record of each partition, periodically, on
  partition revocation (after draining those partitions) and at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from service.events import RawRecord
from service.logs import KAFKA_LOGGER
from service.metrics import Metrics
from service.offsets import OffsetTracker
from service.results import Outcome
from service.settings import KafkaSettings, ProcessingSettings

log = structlog.get_logger("herald.consumer")
T = TypeVar("T")
Handler = Callable[[RawRecord], Awaitable[list[Outcome]]]
_BATCH = 500
_POLL_S = 0.2


class FatalConsumerError(Exception):
    """The consumer cannot go on (a bug in a handler, a fatal librdkafka error): exit non-zero."""


class Consumer:
    """A consumer-group member that feeds records to a handler and commits what is finished."""

    def __init__(
        self,
        kafka: KafkaSettings,
        processing: ProcessingSettings,
        topics: list[str],
        handler: Handler,
        metrics: Metrics,
    ) -> None:
        self._kafka = kafka
        self._proc = processing
        self._topics = topics
        self._handler = handler
        self._metrics = metrics
        self._tracker = OffsetTracker()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[tuple[str, int, bytes], asyncio.Task[None]] = {}
        self._tp_tasks: dict[tuple[str, int], set[asyncio.Task[None]]] = {}
        self._paused = False
        self._assigned: set[tuple[str, int]] = set()
        self._joined = False
        self._running = False
        self._fatal: BaseException | None = None
        self.counts: Counter[str] = Counter()
        """Outcome statuses and record totals, for the shutdown summary."""
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        conf: dict[str, Any] = {
            **kafka.librdkafka(),
            "group.id": kafka.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": kafka.auto_offset_reset,
            "session.timeout.ms": kafka.session_timeout_ms,
            "max.poll.interval.ms": kafka.max_poll_interval_ms,
            "statistics.interval.ms": kafka.statistics_interval_ms,
            "stats_cb": self._on_stats,
            "error_cb": self._on_error,
            "logger": KAFKA_LOGGER,
        }
        self._consumer = confluent_kafka.Consumer(conf)

    @property
    def ready(self) -> bool:
        """Running and past the first group join, so records will flow if there are any."""
        return self._running and self._joined

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, lambda: fn(*args, **kwargs))

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain, commit and leave the group."""
        self._loop = asyncio.get_running_loop()
        self._consumer.subscribe(
            self._topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        self._running = True
        log.info("consuming", topics=self._topics, group=self._kafka.group_id)
        last_commit = time.monotonic()
        try:
            while not stop.is_set() and self._fatal is None:
                messages = await self._call(self._consumer.consume, _BATCH, _POLL_S)
                for m in messages:
                    self._accept(m)
                self._flow_control()
                if time.monotonic() - last_commit >= self._proc.commit_interval_ms / 1000:
                    await self._commit()
                    last_commit = time.monotonic()
        finally:
            self._running = False
            await self._shutdown()
        if self._fatal is not None:
            raise FatalConsumerError(str(self._fatal)) from self._fatal

    def _accept(self, m: Any) -> None:
        err = m.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            if err.fatal():
                self._fatal = KafkaException(err)
            log.warning("consumer error", error=err.str(), code=err.name())
            return
        raw = RawRecord(
            topic=m.topic(),
            partition=m.partition(),
            offset=m.offset(),
            key=m.key(),
            value=m.value(),
            headers=tuple(m.headers() or ()),
            timestamp_ms=m.timestamp()[1] if m.timestamp()[0] else None,
        )
        tp = (raw.topic, raw.partition)
        self._tracker.track(tp, raw.offset)
        self._metrics.in_flight.inc()
        prev = self._tails.get((*tp, raw.key)) if raw.key is not None else None
        task = asyncio.create_task(self._process(raw, prev))
        self._tasks.add(task)
        self._tp_tasks.setdefault(tp, set()).add(task)
        if raw.key is not None:
            self._tails[(*tp, raw.key)] = task
        task.add_done_callback(lambda t: self._finished(t, raw))

    async def _process(self, raw: RawRecord, prev: asyncio.Task[None] | None) -> None:
        if prev is not None:
            await asyncio.wait([prev])  # same key: keep the producer's order
        outcomes = await self._handler(raw)
        self.counts["records"] += 1
        self.counts.update(o.status.value.lower() for o in outcomes)

    def _finished(self, task: asyncio.Task[None], raw: RawRecord) -> None:
        tp = (raw.topic, raw.partition)
        self._tasks.discard(task)
        self._tp_tasks.get(tp, set()).discard(task)
        if raw.key is not None and self._tails.get((*tp, raw.key)) is task:
            del self._tails[(*tp, raw.key)]
        self._metrics.in_flight.dec()
        if task.cancelled():
            return  # shutdown gave up on it: not done, so never committed
        exc = task.exception()
        if exc is not None:
            # The pipeline turns every expected failure into an outcome; this is a bug.
            log.error("record handler crashed", error=repr(exc), exc_info=exc)
            self._fatal = exc
            return
        self._tracker.done(tp, raw.offset)

    def _flow_control(self) -> None:
        n = len(self._tasks)
        limit = self._proc.max_in_flight
        if not self._paused and n >= limit:
            self._set_paused(True)
        elif self._paused and n <= limit // 2:
            self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        parts = [TopicPartition(t, p) for t, p in self._assigned]
        if parts:
            (self._consumer.pause if paused else self._consumer.resume)(parts)
        self._paused = paused
        self._metrics.paused.set(1 if paused else 0)
        log.info(
            "consumption paused" if paused else "consumption resumed", in_flight=len(self._tasks)
        )

    async def _commit(self, tps: list[tuple[str, int]] | None = None) -> None:
        positions = self._tracker.committable(tps)
        if not positions:
            return
        try:
            await self._call(self._commit_sync, positions)
        except KafkaException as exc:
            log.warning("commit failed; will retry", error=str(exc))

    def _commit_sync(self, positions: dict[tuple[str, int], int]) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in positions.items()]
        self._consumer.commit(offsets=offsets, asynchronous=False)
        self._tracker.committed(positions)

    # Rebalance callbacks run on the consumer thread, inside consume() or close().

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._joined = True
        self._assigned.update((p.topic, p.partition) for p in partitions)
        if self._paused and partitions:
            consumer.pause(partitions)
        log.info("partitions assigned", partitions=_names(partitions))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        assert self._loop is not None
        waiting = asyncio.run_coroutine_threadsafe(self._drain(tps), self._loop)
        try:
            waiting.result(timeout=self._proc.shutdown_timeout_s)
        except TimeoutError:
            log.warning(
                "revoked partitions not drained in time; their records will be redelivered",
                in_flight=self._tracker.in_flight(tps),
            )
        positions = self._tracker.committable(tps)
        if positions:
            try:
                self._commit_sync(positions)
            except KafkaException as exc:
                log.warning("commit on revoke failed", error=str(exc))
        self._tracker.forget(tps)
        self._assigned.difference_update(tps)
        log.info("partitions revoked", partitions=_names(partitions))

    async def _drain(self, tps: list[tuple[str, int]]) -> None:
        tasks = set().union(*(self._tp_tasks.get(tp, set()) for tp in tps)) if tps else set()
        if tasks:
            await asyncio.wait(tasks)

    async def _shutdown(self) -> None:
        if self._tasks:
            log.info("draining", in_flight=len(self._tasks))
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._proc.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
                log.warning("shutdown deadline passed; records handed back", count=len(pending))
        await self._commit()
        await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)

    def _on_stats(self, stats_json: str) -> None:
        stats = json.loads(stats_json)
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                lag = p.get("consumer_lag", -1)
                if pid != "-1" and lag >= 0 and (topic, int(pid)) in self._assigned:
                    self._metrics.consumer_lag.labels(topic, pid).set(lag)

    def _on_error(self, err: KafkaError) -> None:
        log.warning("kafka client error", error=err.str(), code=err.name())


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]
