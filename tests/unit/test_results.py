"""Outcome records: what is written is what a reader of the results topic gets back."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime

from service.app import Loaded
from service.outcomes.records import Outcome, OutcomeCodec, Status, decode_outcome

AT = datetime(2026, 11, 22, 10, 0, 0, 123000, tzinfo=UTC)


def _codec(loaded: Loaded) -> OutcomeCodec:
    schema = OutcomeCodec.outcome_schema(loaded.store)
    return OutcomeCodec(results_topic="r", schema=schema)


def _every_field_set() -> Outcome:
    return Outcome(
        outcome_id="k" * 32,
        event_id="e-1",
        event_type="order.confirmed",
        source_topic="orders",
        source_partition=1,
        source_offset=42,
        notification_type="order.receipt",
        template="order/receipt",
        category="transactional",
        locale="fr",
        recipient="c***@example.com",
        status=Status.FAILED,
        attempt=3,
        smtp_code=550,
        smtp_enhanced_code="5.1.1",
        smtp_text="no such user",
        message_id="<k@example.com>",
        reason="rejected",
        detail="550 5.1.1",
        occurred_at=AT,
        processed_at=AT.replace(second=1),
        sent_at=AT.replace(second=2),
    )


def test_outcome_reads_back_field_for_field(loaded: Loaded) -> None:
    outcome = _every_field_set()
    back = decode_outcome(_codec(loaded).encode(outcome), loaded.store)
    assert {**asdict(outcome), "status": "FAILED"} == back


def test_record_holds_every_field_and_the_status_as_text() -> None:
    outcome = _every_field_set()
    record = outcome.to_record()
    assert [f.name for f in fields(Outcome)] == list(record)
    assert "FAILED" == record["status"]
    assert type(record["status"]) is str
    assert record["sent_at"] is outcome.sent_at
