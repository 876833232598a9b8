"""The one place where a record's fate is decided: decode → route → render → deliver → report.

Every record ends with at least one outcome (one per notification, or one for the record when
it never became a notification), and `handle` returns only once all of them are acknowledged by
Kafka; only then may its offset be committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from service.errors import (
    DeliveryError,
    DeliveryUnknownError,
    HeraldError,
    PublishError,
    RecordError,
    TransientDeliveryError,
)
from service.events import Event, EventDecoder, RawRecord
from service.mailer import Mailer
from service.metrics import Metrics
from service.mime import compose
from service.rendering import Renderer
from service.results import Outcome, OutcomePublisher, Status, now, record_outcome_id
from service.routing import Notification, RoutingTable, route
from service.settings import MailSettings

log = structlog.get_logger("herald.pipeline")


@dataclass(slots=True)
class _RecordState:
    """What one record's processing has done so far; lives for one `handle` call."""

    raw: RawRecord
    dead_lettered: bool = False
    outcomes: list[Outcome] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        *,
        decoder: EventDecoder,
        table: RoutingTable,
        renderer: Renderer,
        mailer: Mailer,
        publisher: OutcomePublisher,
        metrics: Metrics,
        mail: MailSettings,
    ) -> None:
        self._decoder = decoder
        self._table = table
        self._renderer = renderer
        self._mailer = mailer
        self._publisher = publisher
        self._metrics = metrics
        self._mail = mail

    async def handle(self, raw: RawRecord) -> list[Outcome]:
        """Decide, publish and count every outcome of one record."""
        started = time.perf_counter()
        state = _RecordState(raw=raw)
        self._metrics.records_consumed.labels(raw.topic).inc()
        with structlog.contextvars.bound_contextvars(
            topic=raw.topic, partition=raw.partition, offset=raw.offset
        ):
            await self._decide(state)
            for outcome in state.outcomes:
                await _until_acknowledged(partial(self._publisher.publish, outcome), self._metrics)
                self._metrics.notifications.labels(
                    outcome.notification_type or "none", outcome.status.value.lower()
                ).inc()
            log.info(
                "record processed",
                outcomes=[f"{o.notification_type or '-'}:{o.status.value}" for o in state.outcomes],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        return state.outcomes

    async def _decide(self, state: _RecordState) -> None:
        raw = state.raw
        try:
            event = await self._decoder.decode(raw)
        except HeraldError as exc:  # DecodeError, or the registry out of reach
            self._metrics.decode_failures.labels(raw.topic).inc()
            await self._dead_letter(state, exc, stage="decode", event=None)
            return
        self._metrics.records_decoded.labels(raw.topic).inc()
        structlog.contextvars.bind_contextvars(event_id=event.event_id)
        try:
            notifications = route(event, self._table)
        except RecordError as exc:
            await self._dead_letter(state, exc, stage="route", event=event)
            return
        for n in notifications:
            state.outcomes.append(await self._deliver(state, n))

    async def _deliver(self, state: _RecordState, n: Notification) -> Outcome:
        if not n.condition_met:
            return self._outcome(state.raw, n, Status.SUPPRESSED, reason="condition_false")
        try:
            t0 = time.perf_counter()
            rendered = self._renderer.render(n)
            message = compose(n, rendered, self._mail, now())
            self._metrics.render_seconds.observe(time.perf_counter() - t0)
        except RecordError as exc:
            await self._send_to_dead_letter(state, exc, stage="render")
            return self._outcome(
                state.raw, n, Status.DEAD_LETTERED, reason=exc.reason, detail=str(exc)
            )
        except DeliveryError as exc:  # an address no server could take
            return self._outcome(state.raw, n, Status.FAILED, reason=exc.reason, detail=str(exc))
        try:
            delivery = await self._mailer.send(message)
        except DeliveryError as exc:
            status = Status.UNKNOWN if isinstance(exc, DeliveryUnknownError) else Status.FAILED
            reason = "retries_exhausted" if isinstance(exc, TransientDeliveryError) else exc.reason
            return self._outcome(
                state.raw,
                n,
                status,
                reason=reason,
                detail=str(exc),
                locale=rendered.locale,
                message_id=message.message_id,
                attempt=exc.attempts,
                smtp_code=exc.code,
                smtp_enhanced_code=exc.enhanced_code,
                smtp_text=exc.text,
            )
        self._metrics.event_to_accepted_seconds.labels(n.priority.value).observe(
            max(0.0, (delivery.sent_at - n.event.occurred_at).total_seconds())
        )
        return self._outcome(
            state.raw,
            n,
            Status.SENT,
            locale=rendered.locale,
            message_id=message.message_id,
            attempt=delivery.attempts,
            smtp_code=delivery.code,
            smtp_enhanced_code=delivery.enhanced_code,
            smtp_text=delivery.text,
            sent_at=delivery.sent_at,
        )

    def _outcome(
        self, raw: RawRecord, n: Notification, status: Status, **fields: object
    ) -> Outcome:
        values: dict[str, object] = {
            "outcome_id": n.idempotency_key,
            "event_id": n.event.event_id,
            "event_type": n.event.event_type,
            "source_topic": raw.topic,
            "source_partition": raw.partition,
            "source_offset": raw.offset,
            "notification_type": n.type,
            "template": n.template,
            "category": n.category.value,
            "locale": None,
            "recipient": self._publisher.recipient_label(n.recipient.email),
            "status": status,
            "attempt": 0,
            "occurred_at": n.event.occurred_at,
            "processed_at": now(),
        }
        values.update(fields)
        if status is not Status.SENT:
            log.warning(
                "notification not sent",
                notification=n.type,
                status=status.value,
                reason=values.get("reason"),
                detail=values.get("detail"),
            )
        return Outcome(**values)  # type: ignore[arg-type]

    async def _dead_letter(
        self, state: _RecordState, exc: HeraldError, *, stage: str, event: Event | None
    ) -> None:
        await self._send_to_dead_letter(state, exc, stage=stage)
        raw = state.raw
        state.outcomes.append(
            Outcome(
                outcome_id=record_outcome_id(raw),
                event_id=event.event_id if event else None,
                event_type=event.event_type if event else None,
                source_topic=raw.topic,
                source_partition=raw.partition,
                source_offset=raw.offset,
                notification_type=None,
                template=None,
                category=None,
                locale=None,
                recipient=None,
                status=Status.DEAD_LETTERED,
                attempt=0,
                reason=exc.reason,
                detail=str(exc),
                occurred_at=event.occurred_at if event else None,
                processed_at=now(),
            )
        )

    async def _send_to_dead_letter(
        self, state: _RecordState, exc: HeraldError, *, stage: str
    ) -> None:
        if state.dead_lettered:
            return  # one copy per record, however many of its notifications failed
        log.warning("record dead-lettered", stage=stage, reason=exc.reason, detail=str(exc))
        await _until_acknowledged(
            lambda: self._publisher.dead_letter(
                state.raw, reason=exc.reason, detail=str(exc), stage=stage
            ),
            self._metrics,
        )
        self._metrics.dead_letters.labels(exc.reason).inc()
        state.dead_lettered = True


async def _until_acknowledged(send: Callable[[], Awaitable[None]], metrics: Metrics) -> None:
    """Kafka already retries for `message.timeout.ms`; past that, keep trying, never drop."""
    delay = 0.5
    while True:
        try:
            await send()
            return
        except PublishError as exc:
            metrics.publish_failures.inc()
            log.error("publish failed; offset held back", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
