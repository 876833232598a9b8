"""What one record leads Herald to write: its outcomes, at most one dead-letter copy, and
retry tickets. Outcomes are built here and nowhere else, addresses masked on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import structlog

from service.events.model import Event
from service.kafka.records import Outbound, RawRecord
from service.logs import mask_emails
from service.metrics import Metrics
from service.outcomes.dead_letters import dead_letter
from service.outcomes.records import Outcome, OutcomeCodec, now, record_outcome_id
from service.outcomes.status import Status
from service.outcomes.trace import TraceContext
from service.routing import Notification

log = structlog.get_logger("herald.outcomes")
_QUIET = frozenset({Status.SENT, Status.SUPPRESSED, Status.DEDUPLICATED})
"""Statuses that are no news: the rest are logged as warnings."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Sending:
    """What became of a notification's mail on the way out, for its outcome."""

    locale: str | None = None
    message_id: str | None = None
    attempt: int = 0
    smtp_code: int | None = None
    smtp_enhanced_code: str | None = None
    smtp_text: str | None = None
    sent_at: datetime | None = None


@dataclass(slots=True)
class Report:
    """Built up while one record is handled; `records()` is what its transaction writes."""

    raw: RawRecord
    """The record as first consumed (for a retry, the original event's coordinates)."""
    codec: OutcomeCodec
    dead_letter_topic: str
    metrics: Metrics
    trace: TraceContext | None = None
    """The upstream trace of the record, written into each of its outcomes."""
    outcomes: list[Outcome] = field(default_factory=list)
    tickets: list[Outbound] = field(default_factory=list)
    dead_letter: Outbound | None = None

    def notification(
        self,
        n: Notification,
        status: Status,
        reason: str | None = None,
        detail: str | None = None,
        sending: Sending = Sending(),
    ) -> None:
        """The outcome of one notification."""
        trace = self.trace
        self._add(
            Outcome(
                outcome_id=n.idempotency_key,
                event_id=n.event.event_id,
                event_type=n.event.event_type,
                source_topic=self.raw.topic,
                source_partition=self.raw.partition,
                source_offset=self.raw.offset,
                notification_type=n.type,
                template=n.template,
                category=n.category.value,
                locale=sending.locale,
                recipient=self.codec.recipient_label(n.recipient.email),
                status=status,
                attempt=sending.attempt,
                smtp_code=sending.smtp_code,
                smtp_enhanced_code=sending.smtp_enhanced_code,
                smtp_text=_masked(sending.smtp_text),
                message_id=sending.message_id,
                reason=reason,
                detail=_masked(detail or "; ".join(n.recipient.notes) or None),
                occurred_at=n.event.occurred_at,
                processed_at=now(),
                sent_at=sending.sent_at,
                trace_id=trace.trace_id if trace else None,
                parent_span_id=trace.parent_id if trace else None,
                trace_state=trace.state if trace else None,
            )
        )

    def record(self, event: Event | None, status: Status, reason: str, detail: str) -> None:
        """The one outcome of a record that never became a notification."""
        trace = self.trace
        self._add(
            Outcome(
                outcome_id=record_outcome_id(self.raw),
                event_id=event.event_id if event else None,
                event_type=event.event_type if event else None,
                source_topic=self.raw.topic,
                source_partition=self.raw.partition,
                source_offset=self.raw.offset,
                notification_type=None,
                template=None,
                category=None,
                locale=None,
                recipient=None,
                status=status,
                attempt=0,
                reason=reason,
                detail=_masked(detail),
                occurred_at=event.occurred_at if event else None,
                processed_at=now(),
                trace_id=trace.trace_id if trace else None,
                parent_span_id=trace.parent_id if trace else None,
                trace_state=trace.state if trace else None,
            )
        )

    def copy_to_dead_letter(self, reason: str, detail: str, stage: str) -> None:
        """Once per record, however many of its notifications failed."""
        if self.dead_letter is not None:
            return
        log.warning("record dead-lettered", stage=stage, reason=reason, detail=detail)
        self.dead_letter = dead_letter(
            self.raw, topic=self.dead_letter_topic, reason=reason, detail=detail, stage=stage
        )
        self.metrics.dead_letters.labels(reason).inc()

    def retry(self, ticket: Outbound) -> None:
        """A notification goes to a retry round: no outcome yet."""
        self.tickets.append(ticket)
        self.metrics.retries_scheduled.labels(ticket.topic).inc()

    def records(self) -> list[Outbound]:
        """Dead letter first, then the outcomes, then the tickets."""
        out = [self.dead_letter] if self.dead_letter is not None else []
        return out + [self.codec.outcome(o) for o in self.outcomes] + self.tickets

    def _add(self, outcome: Outcome) -> None:
        if outcome.status not in _QUIET and outcome.notification_type is not None:
            log.warning(
                "notification not sent",
                notification=outcome.notification_type,
                status=outcome.status.value,
                reason=outcome.reason,
                detail=outcome.detail,
            )
        self.metrics.notifications.labels(
            outcome.notification_type or "none", outcome.status.value.lower()
        ).inc()
        self.outcomes.append(outcome)


def _masked(text: str | None) -> str | None:
    """Relays often quote the address back; details may hold one too."""
    return mask_emails(text) if text is not None else None
