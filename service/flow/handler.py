"""The handler: one record through the stages in order, and the decision table carried out.

decode → route → policy → render → deliver, per notification. A failure becomes a verdict of
`service.outcomes.decisions`; this module only does what the verdict says: wait for a
dependency, try again now, hand the notification to a retry round, or report it. What the
record leads to is collected in a `Report` and written by the lane with the record's offset.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from service.delivery.pool import Accepted, Mailer
from service.delivery.slots import Slots
from service.errors import DeliveryError, HeraldError, InternalError, RouteRemoved
from service.events.decoder import EventDecoder
from service.events.model import Event
from service.flow.messages import Message, Messages
from service.kafka.records import Outbound, RawRecord
from service.metrics import Metrics
from service.outcomes.decisions import RECORD_STAGES, Next, Stage, Verdict, decide
from service.outcomes.records import OutcomeCodec
from service.outcomes.report import Report, Sending
from service.outcomes.retries import RetryPolicy, RetryTicket
from service.outcomes.status import Status
from service.outcomes.trace import TraceContext, traced
from service.policy.policy import Policy
from service.routing import Notification, Priority, RoutingTable, route
from service.settings import SmtpSettings
from service.stores.idempotency import IdempotencyStore

log = structlog.get_logger("herald.flow")
T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Handled:
    """What one consumed record leads Herald to write, and the statuses for counting."""

    records: list[Outbound]
    statuses: list[str]


async def patiently(op: Callable[[], Awaitable[T]], what: str) -> T:
    """Run `op` until a dependency it needs answers: the WAIT of the decision table for the
    registry and the store. Never goes on without them."""
    delay = 0.2
    while True:
        try:
            return await op()
        except HeraldError as exc:
            if not exc.server_wide:
                raise
            log.warning("waiting for a dependency", step=what, error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


class Handler:
    """Calls the stages for each record; one instance serves every lane."""

    def __init__(
        self,
        *,
        decoder: EventDecoder,
        table: RoutingTable,
        policy: Policy,
        messages: Messages,
        mailer: Mailer,
        store: IdempotencyStore,
        codec: OutcomeCodec,
        dead_letter_topic: str,
        retries: RetryPolicy,
        smtp: SmtpSettings,
        metrics: Metrics,
        express: Priority | None = None,
        turns: Slots | None = None,
        max_internal_attempts: int = 3,
    ) -> None:
        """`express`: mail of this priority or above is rendered and sent ahead of the rest.

        `turns` bounds the notifications between rendering and the server's reply: a record
        renders only once its turn comes, close to when a connection frees up, so a batch of
        records does not render in one go and hold the event loop (and every express record
        behind it). Express mail goes first.
        """
        self._decoder = decoder
        self._table = table
        self._policy = policy
        self._messages = messages
        self.mailer = mailer
        self._store = store
        self._codec = codec
        self._dead_letter_topic = dead_letter_topic
        self._retries = retries
        self._smtp = smtp
        self._metrics = metrics
        self._express = express
        self._turns = turns or Slots(64)
        self._max_internal = max_internal_attempts

    async def handle(self, raw: RawRecord) -> Handled:
        """Every outcome of one record (an event, or a retry round of one of its mails)."""
        started = time.perf_counter()
        self._metrics.records_consumed.labels(raw.topic).inc()
        # A retry record carries its event's headers, traceparent included: the same trace.
        trace = traced(raw.headers, self._metrics)
        # Bound for this record only: the with-block unbinds, and each record is its own task.
        with structlog.contextvars.bound_contextvars(
            topic=raw.topic,
            partition=raw.partition,
            offset=raw.offset,
            **(trace.log_fields() if trace else {}),
        ):
            try:
                report, ticket, readable = self._open(raw, trace)
                if readable:
                    await self._handle(report, ticket)
            except Exception as exc:  # the boundary: one outcome for the record, never a crash
                report, ticket = self._report(raw, trace), None
                self._settle_record(report, Stage.DECODE, self._internal(Stage.DECODE, exc), None)
            log.info(
                "record processed",
                outcomes=[
                    f"{o.notification_type or '-'}:{o.status.value}" for o in report.outcomes
                ],
                retries=len(report.tickets),
                retry_round=ticket.round if ticket else None,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
        return Handled(records=report.records(), statuses=[o.status.value for o in report.outcomes])

    def _report(self, raw: RawRecord, trace: TraceContext | None) -> Report:
        return Report(
            raw=raw,
            codec=self._codec,
            dead_letter_topic=self._dead_letter_topic,
            metrics=self._metrics,
            trace=trace,
        )

    def _open(
        self, raw: RawRecord, trace: TraceContext | None
    ) -> tuple[Report, RetryTicket | None, bool]:
        """The record's report, on the original event's coordinates for a retry round; and
        False when a retry record's ticket cannot be read (its outcome is in the report)."""
        if not self._retries.is_retry_topic(raw.topic):
            return self._report(raw, trace), None, True
        try:
            ticket = self._retries.ticket(raw, self._decoder.topics)
        except HeraldError as exc:
            report = self._report(raw, trace)
            self._settle_record(report, Stage.TICKET, exc, None)
            return report, None, False
        return self._report(ticket.original, trace), ticket, True

    def _internal(self, stage: Stage, exc: Exception) -> InternalError:
        """An unforeseen exception, logged with its traceback and counted, as a HeraldError."""
        self._metrics.internal_errors.labels(stage.value).inc()
        log.error("internal error", stage=stage.value, error=repr(exc), exc_info=exc)
        error = InternalError(f"{type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error

    async def _guarded(self, stage: Stage, op: Callable[[], Awaitable[T]]) -> T:
        """`op`, tried again while the table says so when it fails unforeseen; then the
        InternalError it ended with."""
        tries = 0
        while True:
            try:
                return await op()
            except HeraldError:
                raise
            except Exception as exc:
                tries += 1
                error = self._internal(stage, exc)
                verdict = decide(
                    stage, error, tries_left=tries < self._max_internal, rounds_left=False
                )
                if verdict.next is not Next.RETRY_NOW:
                    raise error from exc
                await asyncio.sleep(random.uniform(0, 0.05 * 2**tries))

    async def _handle(self, report: Report, ticket: RetryTicket | None) -> None:
        event = await self._decode(report)
        if event is None:
            return
        structlog.contextvars.bind_contextvars(event_id=event.event_id)
        stage = Stage.TICKET if ticket else Stage.ROUTE
        try:
            notifications = await self._guarded(stage, lambda: self._route(event, ticket))
        except HeraldError as exc:
            self._settle_record(report, stage, exc, event)
            return
        for n in notifications:
            await self._notify(report, n, ticket)

    async def _route(self, event: Event, ticket: RetryTicket | None) -> list[Notification]:
        notifications = route(event, self._table)
        if ticket is not None:
            notifications = [n for n in notifications if n.type == ticket.notification]
            if not notifications:  # the route was removed since: nothing left to retry
                raise RouteRemoved(f"no route {ticket.notification!r} any more")
        return notifications

    async def _decode(self, report: Report) -> Event | None:
        raw = report.raw
        try:
            event = await self._guarded(
                Stage.DECODE,
                lambda: patiently(lambda: self._decoder.decode(raw.topic, raw.value), "decode"),
            )
        except HeraldError as exc:
            self._metrics.decode_failures.labels(raw.topic).inc()
            self._settle_record(report, Stage.DECODE, exc, None)
            return None
        self._metrics.records_decoded.labels(raw.topic).inc()
        return event

    def _settle_record(
        self, report: Report, stage: Stage, exc: HeraldError, event: Event | None
    ) -> None:
        """A record that never became notifications: its one outcome, as the table says."""
        verdict = decide(stage, exc, tries_left=False, rounds_left=False)
        reason = verdict.reason or exc.reason
        if verdict.next is Next.DEAD_LETTER:
            report.copy_to_dead_letter(reason, str(exc), stage)
        report.record(event, verdict.status or Status.DEAD_LETTERED, reason, str(exc))

    async def _notify(self, report: Report, n: Notification, ticket: RetryTicket | None) -> None:
        try:
            decision = await self._guarded(
                Stage.POLICY, lambda: patiently(lambda: self._policy.decide(n), "policy")
            )
        except HeraldError as exc:
            self._settle(report, n, Stage.POLICY, exc, Sending())
            return
        if decision.deferred:
            report.retry(
                self._retries.defer(
                    report.raw,
                    notification=n.type,
                    rounds_done=ticket.round if ticket else 0,
                    wait_s=decision.wait_s,
                    reason=decision.reason or "paced",
                )
            )
            return
        if not decision.go:
            assert decision.status is not None
            earlier = Sending(message_id=decision.message_id, smtp_code=decision.smtp_code)
            report.notification(n, decision.status, decision.reason, sending=earlier)
            return
        express = self._express is not None and n.priority.at_least(self._express)
        await self._turns.acquire(express)
        try:
            message = await self._render(report, n)
            if message is not None:
                await self._send(report, n, ticket, message, express)
        finally:
            self._turns.release(express)

    async def _render(self, report: Report, n: Notification) -> Message | None:
        try:
            t0 = time.perf_counter()
            message = await self._guarded(Stage.RENDER, lambda: self._messages.build(n))
            self._metrics.render_seconds.observe(time.perf_counter() - t0)
        except HeraldError as exc:  # the event's data, or an address no server could take
            await self._release(n)
            self._settle(report, n, Stage.RENDER, exc, Sending())
            return None
        return message

    async def _send(
        self,
        report: Report,
        n: Notification,
        ticket: RetryTicket | None,
        message: Message,
        express: bool,
    ) -> None:
        """Tries in this process while the table says so; then a retry round or an outcome."""
        tries = 0
        rounds_done = ticket.round if ticket else 0
        while True:
            try:
                accepted = await self._guarded(
                    Stage.DELIVER, lambda: self._attempt(n, message, express)
                )
                break
            except InternalError as exc:
                self._settle(report, n, Stage.DELIVER, exc, _sending(message, tries, None))
                return
            except DeliveryError as exc:
                tries += not exc.server_wide  # the relay's failures do not use up this mail's
                verdict = decide(
                    Stage.DELIVER,
                    exc,
                    tries_left=tries < self._smtp.max_attempts,
                    rounds_left=self._retries.rounds_left(rounds_done, n.event.occurred_at),
                )
                if verdict.next is Next.WAIT:
                    await self.mailer.available()
                    continue
                if verdict.next is Next.RETRY_NOW:
                    base = self._smtp.retry_backoff_ms / 1000 * 2 ** max(0, tries - 1)
                    await asyncio.sleep(random.uniform(0, base))  # full jitter
                    continue
                if exc.outcome_known:
                    await self._release(n)
                sending = _sending(message, tries, exc)
                if verdict.next is Next.RETRY_LATER:
                    report.retry(
                        self._retries.schedule(
                            report.raw,
                            notification=n.type,
                            rounds_done=rounds_done,
                            reason=exc.reason,
                        )
                    )
                    return
                self._settle(report, n, Stage.DELIVER, exc, sending, verdict)
                return
        await self._accepted(report, n, message, accepted, tries + 1)

    async def _attempt(self, n: Notification, message: Message, express: bool) -> Accepted:
        """One attempt; the in-DATA mark is durable before the body leaves (RFC 1047)."""
        key = n.idempotency_key
        async with self.mailer.session(express=express) as session:
            await session.envelope(message.email)
            await patiently(lambda: self._store.data_started(key), "delivery")
            return await session.body()

    async def _accepted(
        self, report: Report, n: Notification, message: Message, accepted: Accepted, attempt: int
    ) -> None:
        mid = message.email.message_id
        sent_ms = int(accepted.sent_at.timestamp() * 1000)
        await patiently(
            lambda: self._store.accepted(
                n.idempotency_key, message_id=mid, smtp_code=accepted.code, sent_at_ms=sent_ms
            ),
            "delivery",
        )
        self._metrics.event_to_accepted_seconds.labels(n.priority.value).observe(
            max(0.0, (accepted.sent_at - n.event.occurred_at).total_seconds())
        )
        sending = Sending(
            locale=message.locale,
            message_id=mid,
            attempt=attempt,
            smtp_code=accepted.code,
            smtp_enhanced_code=accepted.enhanced_code,
            smtp_text=accepted.text,
            sent_at=accepted.sent_at,
        )
        report.notification(n, Status.SENT, sending=sending)

    def _settle(
        self,
        report: Report,
        n: Notification,
        stage: Stage,
        exc: HeraldError,
        sending: Sending,
        verdict: Verdict | None = None,
    ) -> None:
        """A notification's outcome as the table says, with the record's bytes dead-lettered
        when it says so."""
        verdict = verdict or decide(stage, exc, tries_left=False, rounds_left=False)
        assert stage not in RECORD_STAGES
        assert verdict.status is not None
        reason = verdict.reason or exc.reason
        if verdict.next is Next.DEAD_LETTER:
            report.copy_to_dead_letter(reason, str(exc), stage)
        report.notification(n, verdict.status, reason, detail=str(exc), sending=sending)

    async def _release(self, n: Notification) -> None:
        """A definite non-delivery: a later retry may send."""
        await patiently(lambda: self._store.release(n.idempotency_key), "release")


def _sending(message: Message, tries: int, exc: DeliveryError | None) -> Sending:
    return Sending(
        locale=message.locale,
        message_id=message.email.message_id,
        attempt=tries,
        smtp_code=exc.code if exc else None,
        smtp_enhanced_code=exc.enhanced_code if exc else None,
        smtp_text=exc.text if exc else None,
    )
