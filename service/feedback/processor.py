"""The feedback processor: reads the feedback topic in a consumer group of its own, and for each
report publishes the correction of the outcome it names and the suppression it creates.

At least once: a batch's corrections and suppressions are produced by an idempotent producer
(acks=all) and acknowledged before its offsets are committed. A batch that cannot be published
(Kafka, Redis unavailable) is read again from its first offsets; a process that stops between
the acknowledgement and the commit reads it again on restart. Either way a report may publish
its correction twice, and readers de-duplicate on (outcome_id, status); a suppression
published twice is one record of the compacted topic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from service.errors import DependencyUnavailable
from service.feedback.corrections import (
    Coordinates,
    correction,
    correlate,
    soft_counter,
    suppression,
)
from service.feedback.model import Feedback, FeedbackKind
from service.kafka.records import Outbound
from service.logs import KAFKA_LOGGER, mask_emails
from service.metrics import Metrics
from service.outcomes.records import OutcomeCodec
from service.settings import KafkaSettings
from service.settings.feedback import FeedbackSettings
from service.stores.caps import CapStore
from service.stores.codec import StateCodec
from service.stores.suppressions import SuppressionCodec

log = structlog.get_logger("herald.feedback")
_BATCH = 200
_POLL_S = 0.2
_BACKOFF_S = 1.0
_ACK_TIMEOUT_S = 30.0


class FeedbackProcessor:
    """Consumes `mail.feedback` on a thread of its own; publishes corrections and suppressions.

    An async context manager: entering subscribes and starts the loop as a task, leaving stops
    polling, lets the batch in hand finish (published and committed), and closes the clients.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        settings: FeedbackSettings,
        *,
        feedback_topic: str,
        suppressions_topic: str,
        feedback: StateCodec,
        outcomes: OutcomeCodec,
        suppressions: SuppressionCodec,
        caps: CapStore,
        address_key: bytes,
        id_domain: str,
        metrics: Metrics,
    ) -> None:
        """`id_domain`: the domain of Herald's Message-IDs (`MailSettings.id_domain`)."""
        self.topic = feedback_topic
        self.group_id = f"{kafka.group_id}-feedback"
        self._settings = settings
        self._suppressions_topic = suppressions_topic
        self._feedback = feedback
        self._outcomes = outcomes
        self._suppressions = suppressions
        self._caps = caps
        self._key = address_key
        self._domain = id_domain
        self._metrics = metrics
        self._consumer_conf: dict[str, Any] = {
            **kafka.librdkafka(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            # A new group reads what intake published before Herald first ran.
            "auto.offset.reset": "earliest",
            "logger": KAFKA_LOGGER,
        }
        self._producer_conf: dict[str, Any] = {
            **kafka.librdkafka(),
            "client.id": f"{kafka.client_id}-feedback-out",
            "enable.idempotence": True,
            "acks": "all",
            "logger": KAFKA_LOGGER,
        }
        self._consumer: Any = None
        self._producer: Any = None
        self._polling = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-feedback-in")
        self._flushing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="herald-feedback-out")
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.processed = 0
        self.corrections = 0
        self.suppressed = 0
        self.undecodable = 0

    async def __aenter__(self) -> FeedbackProcessor:
        loop = asyncio.get_running_loop()
        self._consumer = await loop.run_in_executor(self._polling, self._subscribe)
        self._producer = confluent_kafka.Producer(self._producer_conf)
        self._task = asyncio.create_task(self._run(), name="herald-feedback")
        log.info("feedback processor started", topic=self.topic, group=self.group_id)
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self._consumer is not None:
            await loop.run_in_executor(self._polling, self._consumer.close)
        if self._producer is not None:
            await loop.run_in_executor(self._flushing, self._producer.flush, _ACK_TIMEOUT_S)
        self._polling.shutdown(wait=True)
        self._flushing.shutdown(wait=True)
        log.info(
            "feedback processor stopped",
            processed=self.processed,
            corrections=self.corrections,
            suppressions=self.suppressed,
            undecodable=self.undecodable,
        )

    @property
    def failed(self) -> bool:
        """True once the loop has ended on its own (a bug): nothing is processed any more."""
        return self._task is not None and self._task.done() and not self._stop.is_set()

    def _subscribe(self) -> Any:
        consumer = confluent_kafka.Consumer(self._consumer_conf)
        consumer.subscribe([self.topic])
        return consumer

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            messages = await loop.run_in_executor(
                self._polling, self._consumer.consume, _BATCH, _POLL_S
            )
            if not messages:
                continue
            try:
                outbound, offsets = await self._handle(messages)
                await self._publish(outbound)
            except DependencyUnavailable as exc:
                # Nothing of the batch is committed: read it again from its first offsets.
                log.warning("feedback batch not published; read again", error=str(exc))
                await loop.run_in_executor(self._polling, self._rewind, messages)
                await asyncio.sleep(_BACKOFF_S)
                continue
            await loop.run_in_executor(self._polling, self._commit, offsets)

    async def _handle(self, messages: Sequence[Any]) -> tuple[list[Outbound], list[TopicPartition]]:
        """What the batch publishes, and the offsets to commit once it is acknowledged."""
        outbound: list[Outbound] = []
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error() is not None:
                log.warning("feedback topic error", error=m.error().str())
                continue
            offsets[(m.topic(), m.partition())] = m.offset() + 1
            where = Coordinates(topic=m.topic(), partition=m.partition(), offset=m.offset())
            try:
                item = Feedback.from_record(self._feedback.decode(m.value() or b""))
            except (ValueError, KeyError, TypeError) as exc:
                self.undecodable += 1
                self._metrics.feedback_undecodable.inc()
                # The reason names the schema or the fault, never the record's content.
                log.warning(
                    "feedback record skipped: cannot be read",
                    topic=where.topic,
                    partition=where.partition,
                    offset=where.offset,
                    error=type(exc).__name__,
                )
                continue
            try:
                outbound.extend(await self._records(item, where))
            except DependencyUnavailable:
                raise
            except Exception as exc:  # a bug must not stop feedback: count it, skip the record
                self._metrics.internal_errors.labels("feedback").inc()
                log.error(
                    "feedback record skipped: unforeseen error",
                    offset=where.offset,
                    partition=where.partition,
                    error=mask_emails(f"{type(exc).__name__}: {exc}"),
                )
        commits = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        return outbound, commits

    async def _records(self, item: Feedback, where: Coordinates) -> list[Outbound]:
        """The correction and suppression one report publishes."""
        now = datetime.now(UTC)
        out: list[Outbound] = []
        outcome_id = correlate(item, self._domain)
        if outcome_id is not None:
            label = self._outcomes.recipient_label(item.recipient) if item.recipient else None
            fix = correction(
                item,
                outcome_id,
                domain=self._domain,
                recipient=label,
                source=where,
                processed_at=now,
            )
            out.append(self._outcomes.outcome(fix))
        reached = False
        if item.kind is FeedbackKind.SOFT_BOUNCE and item.recipient:
            s = self._settings
            # False on the limit-th distinct report in the window: the one that suppresses.
            reached = not await self._caps.take(
                soft_counter(item, self._key),
                item.feedback_id,
                s.soft_bounce_limit - 1,
                s.soft_bounce_window_h * 3600,
            )
        sup = suppression(
            item, key=self._key, settings=self._settings, now=now, soft_limit_reached=reached
        )
        if sup is not None:
            out.append(
                Outbound(
                    topic=self._suppressions_topic,
                    key=sup.key,
                    value=self._suppressions.encode(sup),
                )
            )
        kind = item.kind.value.lower()
        correlated = "true" if outcome_id else "false"
        self._metrics.feedback_processed.labels(kind, correlated).inc()
        if sup is not None:
            self._metrics.feedback_suppressions.labels(sup.reason).inc()
        self.processed += 1
        self.corrections += outcome_id is not None
        self.suppressed += sup is not None
        log.info(
            "feedback processed",
            feedback_id=item.feedback_id,
            kind=kind,
            provider=item.provider,
            outcome_id=outcome_id,
            suppression=sup.reason if sup else None,
        )
        return out

    async def _publish(self, records: Sequence[Outbound]) -> None:
        """Produce `records` and wait until the broker has acknowledged every one;
        DependencyUnavailable if any is refused or not acknowledged in time."""
        if not records:
            return
        errors: list[KafkaError] = []
        acked: list[None] = []

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            # Runs on the flushing thread; the loop reads the lists only after flush returns.
            if err is None:
                acked.append(None)
            else:
                errors.append(err)

        for r in records:
            try:
                self._producer.produce(r.topic, r.value, r.key, on_delivery=delivered)
            except (BufferError, KafkaException) as exc:
                raise DependencyUnavailable(f"feedback results not queued: {exc}") from exc
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._flushing, self._producer.flush, _ACK_TIMEOUT_S)
        if errors or len(acked) != len(records):
            reason = errors[0].str() if errors else f"no acknowledgement in {_ACK_TIMEOUT_S} s"
            raise DependencyUnavailable(f"feedback results not acknowledged: {reason}")

    def _commit(self, offsets: list[TopicPartition]) -> None:
        """Commit on the consumer's thread. A partition revoked meanwhile is not committed:
        its new owner reads the batch again (at least once)."""
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            log.warning("feedback offsets not committed", error=str(exc))

    def _rewind(self, messages: Sequence[Any]) -> None:
        """Seek each partition of the batch back to its first record."""
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            if m.error() is None:
                first.setdefault((m.topic(), m.partition()), m.offset())
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:  # revoked meanwhile: its new owner reads it
                log.warning("feedback partition not rewound", error=str(exc))
