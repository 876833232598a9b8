"""The one place where a record's fate is decided: decode → route → render → deliver.

`handle` returns what the record leads Herald to write (one outcome per notification, or one for
the record when it never became a notification; a dead-letter copy; retry records). The consumer
writes them in the same transaction as the record's offset, so they appear exactly once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import structlog

from service.delivery.pool import Mailer
from service.delivery.slots import Slots
from service.errors import (
    DeliveryError,
    DeliveryUnknownError,
    DependencyUnavailable,
    HeraldError,
    RecordError,
    SmtpUnavailable,
    TransientDeliveryError,
)
from service.events.decoder import Event, EventDecoder
from service.flow.messages import Messages
from service.kafka.records import Outbound, RawRecord
from service.logs import mask_emails
from service.metrics import Metrics
from service.outcomes.records import Outcome, OutcomeCodec, Status, now, record_outcome_id
from service.outcomes.retries import RetryPolicy, RetryTicket
from service.routing import Notification, Priority, RoutingTable, route
from service.stores.idempotency import IdempotencyStore, State, wait_for_store

log = structlog.get_logger("herald.pipeline")


@dataclass(frozen=True, slots=True, kw_only=True)
class Handled:
    """What one consumed record leads Herald to write, and the statuses for counting."""

    records: list[Outbound]
    statuses: list[str]


@dataclass(slots=True)
class _RecordState:
    """What one record's processing has done so far; lives for one `handle` call."""

    raw: RawRecord
    """The record as first consumed (for a retry, the original event's coordinates)."""
    ticket: RetryTicket | None = None
    dead_letter: Outbound | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    retries: list[Outbound] = field(default_factory=list)


class Pipeline:
    def __init__(
        self,
        *,
        decoder: EventDecoder,
        table: RoutingTable,
        messages: Messages,
        mailer: Mailer,
        store: IdempotencyStore,
        codec: OutcomeCodec,
        retries: RetryPolicy,
        metrics: Metrics,
        express: Priority | None = None,
        turns: Slots | None = None,
    ) -> None:
        """`express`: mail of this priority or above is rendered and sent ahead of the rest.

        `turns` bounds the notifications between rendering and the server's reply. A record
        renders only once its turn comes, close to when a connection frees up: a batch of a
        hundred records then does not render in one go and hold the event loop (and every
        express record behind it) for a quarter of a second. Express mail goes first.
        """
        self._express = express
        self._turns = turns or Slots(64)
        self._decoder = decoder
        self._table = table
        self._messages = messages
        self._mailer = mailer
        self._store = store
        self._codec = codec
        self._retries = retries
        self._metrics = metrics

    async def handle(self, raw: RawRecord) -> Handled:
        """Decide every outcome of one record (an event, or a retry of one of its mails)."""
        started = time.perf_counter()
        self._metrics.records_consumed.labels(raw.topic).inc()
        ticket = self._retries.ticket(raw) if self._retries.is_retry_topic(raw.topic) else None
        state = _RecordState(raw=ticket.original if ticket else raw, ticket=ticket)
        with structlog.contextvars.bound_contextvars(
            topic=raw.topic, partition=raw.partition, offset=raw.offset
        ):
            await self._decide(state)
            for o in state.outcomes:
                self._metrics.notifications.labels(
                    o.notification_type or "none", o.status.value.lower()
                ).inc()
            log.info(
                "record processed",
                outcomes=[f"{o.notification_type or '-'}:{o.status.value}" for o in state.outcomes],
                retries=len(state.retries),
                retry_round=ticket.round if ticket else None,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        records = [self._codec.outcome(o) for o in state.outcomes] + state.retries
        if state.dead_letter is not None:
            records.insert(0, state.dead_letter)
        return Handled(records=records, statuses=[o.status.value for o in state.outcomes])

    async def _decide(self, state: _RecordState) -> None:
        raw = state.raw
        delay = 0.2
        while True:
            try:
                event = await self._decoder.decode(raw)
                break
            except DependencyUnavailable as exc:  # the registry, not the record: wait
                log.warning("decode waiting for a dependency", error=str(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except HeraldError as exc:
                self._metrics.decode_failures.labels(raw.topic).inc()
                self._dead_letter(state, exc.reason, str(exc), stage="decode", event=None)
                return
        self._metrics.records_decoded.labels(raw.topic).inc()
        structlog.contextvars.bind_contextvars(event_id=event.event_id)
        try:
            notifications = route(event, self._table)
        except RecordError as exc:
            self._dead_letter(state, exc.reason, str(exc), stage="route", event=event)
            return
        if state.ticket is not None:
            notifications = [n for n in notifications if n.type == state.ticket.notification]
            if not notifications:  # the route was removed since: nothing left to retry
                self._dead_letter(
                    state,
                    "route_removed",
                    f"no route {state.ticket.notification!r} any more",
                    stage="retry",
                    event=event,
                )
                return
        for n in notifications:
            state.outcomes.extend(await self._deliver(state, n))

    async def _deliver(self, state: _RecordState, n: Notification) -> list[Outcome]:
        if not n.condition_met:
            return [self._outcome(state.raw, n, Status.SUPPRESSED, reason="condition_false")]
        prior = await wait_for_store(lambda: self._store.claim(n.idempotency_key))
        if prior.state is State.ACCEPTED:
            return [
                self._outcome(
                    state.raw,
                    n,
                    Status.DEDUPLICATED,
                    reason="already_accepted",
                    message_id=prior.message_id,
                    smtp_code=prior.smtp_code,
                )
            ]
        if prior.state is State.IN_DATA:
            # An earlier try died between handing over the body and the reply (RFC 1047).
            return [self._outcome(state.raw, n, Status.UNKNOWN, reason="reply_lost")]
        express = self._express is not None and n.priority.at_least(self._express)
        await self._turns.acquire(express)
        try:
            return await self._render_and_send(state, n, express)
        finally:
            self._turns.release(express)

    async def _render_and_send(
        self, state: _RecordState, n: Notification, express: bool
    ) -> list[Outcome]:
        try:
            t0 = time.perf_counter()
            built = await self._messages.build(n)
            message = built.email
            self._metrics.render_seconds.observe(time.perf_counter() - t0)
        except RecordError as exc:
            await self._release(n)
            self._copy_to_dead_letter(state, exc.reason, str(exc), stage="render")
            return [
                self._outcome(
                    state.raw, n, Status.DEAD_LETTERED, reason=exc.reason, detail=str(exc)
                )
            ]
        except DeliveryError as exc:  # an address no server could take
            await self._release(n)
            return [self._outcome(state.raw, n, Status.FAILED, reason=exc.reason, detail=str(exc))]

        async def mark_data() -> None:
            await wait_for_store(lambda: self._store.data_started(n.idempotency_key))

        while True:
            try:
                delivery = await self._mailer.send(
                    message,
                    before_data=mark_data,
                    express=express,
                )
                break
            except SmtpUnavailable:
                await self._mailer.breaker.wait()  # the consumer is paused meanwhile
            except DeliveryError as exc:
                return await self._failed(state, n, exc, built.locale, message.message_id)
        sent_ms = int(delivery.sent_at.timestamp() * 1000)
        await wait_for_store(
            lambda: self._store.accepted(
                n.idempotency_key,
                message_id=message.message_id,
                smtp_code=delivery.code,
                sent_at_ms=sent_ms,
            )
        )
        self._metrics.event_to_accepted_seconds.labels(n.priority.value).observe(
            max(0.0, (delivery.sent_at - n.event.occurred_at).total_seconds())
        )
        return [
            self._outcome(
                state.raw,
                n,
                Status.SENT,
                locale=built.locale,
                message_id=message.message_id,
                attempt=delivery.attempts,
                smtp_code=delivery.code,
                smtp_enhanced_code=delivery.enhanced_code,
                smtp_text=delivery.text,
                sent_at=delivery.sent_at,
            )
        ]

    async def _failed(
        self, state: _RecordState, n: Notification, exc: DeliveryError, locale: str, mid: str
    ) -> list[Outcome]:
        smtp = {
            "locale": locale,
            "message_id": mid,
            "attempt": exc.attempts,
            "smtp_code": exc.code,
            "smtp_enhanced_code": exc.enhanced_code,
            "smtp_text": exc.text,
            "detail": str(exc),
        }
        if isinstance(exc, DeliveryUnknownError):
            return [self._outcome(state.raw, n, Status.UNKNOWN, reason=exc.reason, **smtp)]
        await self._release(n)
        if isinstance(exc, TransientDeliveryError):
            rounds_done = state.ticket.round if state.ticket else 0
            retry = self._retries.schedule(
                state.raw,
                notification=n.type,
                rounds_done=rounds_done,
                occurred_at=n.event.occurred_at,
                reason=exc.reason,
            )
            if retry is not None:
                state.retries.append(retry)
                self._metrics.retries_scheduled.labels(retry.topic).inc()
                return []  # not terminal: the retry round will give the outcome
            self._copy_to_dead_letter(state, "retries_exhausted", str(exc), stage="deliver")
            return [self._outcome(state.raw, n, Status.FAILED, reason="retries_exhausted", **smtp)]
        return [self._outcome(state.raw, n, Status.FAILED, reason=exc.reason, **smtp)]

    async def _release(self, n: Notification) -> None:
        await wait_for_store(lambda: self._store.release(n.idempotency_key))

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
            "recipient": self._codec.recipient_label(n.recipient.email),
            "status": status,
            "attempt": 0,
            "occurred_at": n.event.occurred_at,
            "processed_at": now(),
        }
        values.update(fields)
        for text in ("detail", "smtp_text"):  # relays often quote the address back
            if isinstance(values.get(text), str):
                values[text] = mask_emails(str(values[text]))
        if status not in (Status.SENT, Status.SUPPRESSED, Status.DEDUPLICATED):
            log.warning(
                "notification not sent",
                notification=n.type,
                status=status.value,
                reason=values.get("reason"),
                detail=values.get("detail"),
            )
        return Outcome(**values)  # type: ignore[arg-type]

    def _copy_to_dead_letter(
        self, state: _RecordState, reason: str, detail: str, *, stage: str
    ) -> None:
        """Once per record, however many of its notifications failed."""
        if state.dead_letter is None:
            log.warning("record dead-lettered", stage=stage, reason=reason, detail=detail)
            state.dead_letter = self._codec.dead_letter(
                state.raw, reason=reason, detail=detail, stage=stage
            )
            self._metrics.dead_letters.labels(reason).inc()

    def _dead_letter(
        self, state: _RecordState, reason: str, detail: str, *, stage: str, event: Event | None
    ) -> None:
        """A record that never became a notification: dead-lettered, with one outcome of its own."""
        self._copy_to_dead_letter(state, reason, detail, stage=stage)
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
                reason=reason,
                detail=mask_emails(detail),
                occurred_at=event.occurred_at if event else None,
                processed_at=now(),
            )
        )
