"""A consumer-group member: librdkafka's consumer on a thread of its own, driven from asyncio.

Every call into the consumer runs on that one thread. Rebalance callbacks run there too, inside
`poll`, and hand the partitions to the owner's coroutines on the event loop, waiting for them
(so records of revoked partitions are finished and committed before the group moves them). The
group metadata that transactions need is read on the thread as well, never from the loop: a
loop blocked on the consumer's lock could not run the callback's hand-back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from service.errors import ConsumerFailed
from service.kafka.records import RawRecord, consumed
from service.kafka.records import TopicPartition as TP
from service.logs import KAFKA_LOGGER
from service.metrics import Metrics
from service.settings import KafkaSettings

log = structlog.get_logger("herald.kafka")
T = TypeVar("T")
Partitions = Callable[[list[TP]], Coroutine[Any, Any, None]]
_POLL_S = 0.1
_UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN})
"""Errors by which the consumer reports a broker it could not reach."""


class GroupClient:
    """One member of the consumer group; `poll` returns records of assigned partitions only."""

    def __init__(
        self,
        kafka: KafkaSettings,
        metrics: Metrics,
        *,
        lane: str,
        position: Callable[[TP], int | None],
    ) -> None:
        """`position`: the offset last committed for a partition by this member, for lag."""
        self._log = log.bind(lane=lane)
        self._metrics = metrics
        self._position = position
        self._group_id = kafka.group_id
        self.assigned: set[TP] = set()
        self.paused = False
        """Whether the owner has paused consumption: partitions assigned meanwhile are too."""
        self.group: Any = None
        """Group metadata for send_offsets_to_transaction, as of the last poll or revocation."""
        self.unreachable_at = time.monotonic()
        """When a broker last could not be reached (monotonic): a transactional client silent
        since before then may only be waiting for one."""
        self._hooks: tuple[Partitions, Partitions, Partitions] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-consumer")
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

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def subscribe(
        self, topics: list[str], *, assigned: Partitions, revoked: Partitions, lost: Partitions
    ) -> None:
        """Join the group; the coroutines run on this event loop when partitions move."""
        self._loop = asyncio.get_running_loop()
        self._hooks = (assigned, revoked, lost)
        self._consumer.subscribe(
            topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    async def poll(self, room: int) -> list[RawRecord]:
        """Up to `room` records, returning on the first; ConsumerFailed on a fatal error."""
        messages = await self._call(self._consume, room)
        out = []
        for m in messages:
            err = m.error()
            if err is None:
                raw = consumed(m)
                if (raw.topic, raw.partition) in self.assigned:
                    out.append(raw)
            elif err.code() != KafkaError._PARTITION_EOF:
                self._log.warning("consumer error", error=err.str(), code=err.name())
                if err.fatal():
                    raise ConsumerFailed(f"fatal consumer error: {err.str()}") from KafkaException(
                        err
                    )
        return out

    def _consume(self, room: int) -> list[Any]:
        """On the consumer thread: fetch, and note the group's metadata for transactions."""
        # poll() returns on the first record, consume(n, 0) then takes what is already there:
        # consume(n, timeout) alone would wait for n records or the whole timeout (latency).
        first = self._consumer.poll(_POLL_S)
        messages = [first] if first is not None else []
        if first is not None and room > 1:
            messages += self._consumer.consume(room - 1, 0)
        self.group = self._consumer.consumer_group_metadata()
        return messages

    def pause(self, tps: list[TP]) -> None:
        if tps:
            self._consumer.pause([TopicPartition(t, p) for t, p in tps])

    def resume(self, tps: list[TP]) -> None:
        if tps:
            self._consumer.resume([TopicPartition(t, p) for t, p in tps])

    def rewind(self, tp: TP, offset: int) -> None:
        """Pause a partition and move back to `offset`, to be fetched again once resumed."""
        part = TopicPartition(tp[0], tp[1], offset)
        self._consumer.pause([part])
        self._consumer.seek(part)

    async def close(self) -> None:
        """Leave the group (revoking what is still assigned) and stop the thread."""
        await self._call(self._consumer.close)
        self._thread.shutdown(wait=True)

    # Rebalance callbacks run on the consumer thread, inside poll or close.

    def _hand_over(self, index: int, tps: list[TP]) -> None:
        assert self._loop is not None
        assert self._hooks is not None
        hook = self._hooks[index]
        asyncio.run_coroutine_threadsafe(hook(tps), self._loop).result()

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.assigned.update(tps)
        if partitions:
            # librdkafka keeps a partition's pause flag across assignments: one paused before it
            # was lost would come back paused for ever unless set here, either way.
            (consumer.pause if self.paused else consumer.resume)(partitions)
        self._hand_over(0, tps)
        self._log.info("partitions assigned", partitions=_names(tps))

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.group = consumer.consumer_group_metadata()  # this generation, still ours
        self._hand_over(1, tps)
        self._forget(tps)
        self._log.info("partitions revoked", partitions=_names(tps))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """Lost, not revoked: someone else may own them already, so nothing is committed."""
        tps = [(p.topic, p.partition) for p in partitions]
        self._hand_over(2, tps)
        self._forget(tps)
        self._log.warning(
            "partitions lost; their uncommitted records will be redelivered",
            partitions=_names(tps),
        )

    def _forget(self, tps: list[TP]) -> None:
        self.assigned.difference_update(tps)
        for topic, partition in tps:
            with contextlib.suppress(KeyError):  # never reported, or already gone
                self._metrics.consumer_lag.remove(topic, str(partition))

    def _on_stats(self, stats_json: str) -> None:
        """Lag = last stable offset - committed position. librdkafka's own `consumer_lag`
        stays unknown here: offsets are committed through the producer's transactions."""
        stats = json.loads(stats_json)
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                if pid == "-1" or (topic, int(pid)) not in self.assigned:
                    continue
                end = p.get("ls_offset", -1)
                committed = self._position((topic, int(pid)))
                if committed is None:
                    committed = p.get("committed_offset", -1)
                if committed is None or committed < 0:
                    committed = p.get("lo_offset", -1)
                if end >= 0 and committed >= 0:
                    self._metrics.consumer_lag.labels(topic, pid).set(max(0, end - committed))

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _UNREACHABLE:
            self.unreachable_at = time.monotonic()
        self._log.warning("kafka client error", error=err.str(), code=err.name())


def _names(tps: list[TP]) -> list[str]:
    return [f"{t}[{p}]" for t, p in tps]
