"""Outcome records: what is written is what a reader of the results topic gets back."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import asdict, fields
from datetime import UTC, datetime

import pytest

from service.app import Loaded
from service.errors import ConfigError
from service.outcomes.records import Outcome, OutcomeCodec, decode_outcome
from service.outcomes.status import Status

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
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        parent_span_id="00f067aa0ba902b7",
        trace_state="rojo=00f067aa0ba902b7",
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


def test_hashed_recipients_are_keyed_and_stable(loaded: Loaded) -> None:
    """`hashed` is the HMAC-SHA-256 of the lower-cased address: the same for every spelling
    under one key, different under another, and not the key-less SHA-256 of the address."""
    schema = OutcomeCodec.outcome_schema(loaded.store)

    def label(key: bytes, address: str) -> str:
        codec = OutcomeCodec(
            results_topic="r", schema=schema, recipient_mode="hashed", recipient_hash_key=key
        )
        return codec.recipient_label(address)

    one, other = b"k" * 32, b"j" * 32
    digest = label(one, "Ada@Example.com ")
    assert hmac.new(one, b"ada@example.com", hashlib.sha256).hexdigest() == digest
    assert digest == label(one, "ada@example.com")
    assert digest != label(other, "ada@example.com")
    assert digest != hashlib.sha256(b"ada@example.com").hexdigest()
    assert label(one, "bob@example.com") != digest


def test_hashed_recipients_without_a_key_are_refused(loaded: Loaded) -> None:
    """A codec asked for hashes without a key stops start-up, naming the variable."""
    schema = OutcomeCodec.outcome_schema(loaded.store)
    with pytest.raises(ConfigError) as info:
        OutcomeCodec(results_topic="r", schema=schema, recipient_mode="hashed")
    assert "HERALD_MAIL__RECIPIENT_HASH_SECRET" == info.value.key
