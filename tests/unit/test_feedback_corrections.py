"""What a feedback record leads to: the outcome it names (Message-ID, VERP), the correction of
that outcome and the suppression of the address, as pure functions; and the outcome schema's
new statuses read by a reader on the previous version."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import fastavro
import pytest

from service.events.schemas import SchemaStore, encode_single_object, read_body, write_body
from service.feedback.corrections import (
    Coordinates,
    correction,
    correlate,
    enhanced_code,
    soft_counter,
    suppression,
)
from service.feedback.model import Feedback, FeedbackKind
from service.outcomes.records import OUTCOME_SCHEMA, OutcomeCodec, decode_outcome
from service.outcomes.status import Status
from service.settings.feedback import FeedbackSettings
from service.stores.suppressions import Scope, address_digest
from tests.conftest import ROOT

OID = "0123456789abcdef0123456789abcdef"
DOMAIN = "mail.example.net"
KEY = b"k" * 32
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
WHERE = Coordinates(topic="it.mail.feedback", partition=2, offset=41)


def _item(kind: FeedbackKind = FeedbackKind.HARD_BOUNCE, **overrides: object) -> Feedback:
    values: dict[str, object] = {
        "feedback_id": "dsn:1",
        "kind": kind,
        "recipient": "Gone@Example.org",
        "provider": "dsn",
        "occurred_at": NOW,
        "message_id": f"{OID}@{DOMAIN}",
        "status": "5.1.1",
        "diagnostic": "smtp; 550 5.1.1 <address>: User unknown",
    }
    values.update(overrides)
    return Feedback(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message_id", "verp", "expected"),
    [
        (f"{OID}@{DOMAIN}", None, OID),
        (f"{OID}@MAIL.Example.NET", None, OID),
        (f"{OID}@other.example", None, None),
        (f"{OID.upper()}@{DOMAIN}", None, None),
        (f"{OID[:-1]}@{DOMAIN}", None, None),
        (f"{OID}0@{DOMAIN}", None, None),
        (f"{OID[:-1]}g@{DOMAIN}", None, None),
        ("20261119101503.7A2F40C0B1@mx.example.net", None, None),
        (DOMAIN, None, None),
        (None, OID, OID),
        (None, OID.upper(), OID),
        ("foreign@elsewhere.example", OID, OID),
        (None, "not-an-outcome", None),
        (None, None, None),
    ],
)
def test_correlation_by_message_id_then_verp(
    message_id: str | None, verp: str | None, expected: str | None
) -> None:
    """A Message-ID names an outcome only when its local part is 32 lowercase hex and its
    domain is Herald's; else a VERP token that is an outcome id does."""
    item = _item(message_id=message_id, verp_token=verp)
    assert expected == correlate(item, DOMAIN)


@pytest.mark.parametrize(
    ("status", "expected"),
    [("5.1.1", "5.1.1"), ("4.2.2", "4.2.2"), ("abuse", None), ("550", None), (None, None)],
)
def test_enhanced_code_only_for_rfc_3463_statuses(status: str | None, expected: str | None) -> None:
    """The correction carries the status as smtp_enhanced_code only when it is one."""
    assert expected == enhanced_code(status)


@pytest.mark.parametrize(
    ("kind", "status", "reason"),
    [
        (FeedbackKind.HARD_BOUNCE, Status.BOUNCED, "hard_bounce"),
        (FeedbackKind.SOFT_BOUNCE, Status.BOUNCED, "soft_bounce"),
        (FeedbackKind.COMPLAINT, Status.COMPLAINED, "complaint"),
        (FeedbackKind.DELIVERED, Status.DELIVERED, "delivered"),
    ],
)
def test_each_kind_corrects_the_outcome(kind: FeedbackKind, status: Status, reason: str) -> None:
    """Same outcome id and Message-ID, the feedback record's coordinates, nothing unknown."""
    fixed = correction(
        _item(kind),
        OID,
        domain=DOMAIN,
        recipient="G***@Example.org",
        source=WHERE,
        processed_at=NOW,
    )
    assert (OID, status, reason) == (fixed.outcome_id, fixed.status, reason)
    assert reason == fixed.reason
    assert f"<{OID}@{DOMAIN}>" == fixed.message_id
    assert ("it.mail.feedback", 2, 41) == (
        fixed.source_topic,
        fixed.source_partition,
        fixed.source_offset,
    )
    assert (0, "5.1.1", NOW) == (fixed.attempt, fixed.smtp_enhanced_code, fixed.processed_at)
    assert "smtp; 550 5.1.1 <address>: User unknown" == fixed.detail
    assert (None, None, None, None) == (
        fixed.event_id,
        fixed.notification_type,
        fixed.sent_at,
        fixed.smtp_code,
    )


def test_a_complaint_without_a_diagnostic_keeps_its_type_as_detail() -> None:
    """ARF's `abuse` is not an RFC 3463 code: it is the detail instead."""
    fixed = correction(
        _item(FeedbackKind.COMPLAINT, status="abuse", diagnostic=None),
        OID,
        domain=DOMAIN,
        recipient=None,
        source=WHERE,
        processed_at=NOW,
    )
    assert (None, "abuse", None) == (fixed.smtp_enhanced_code, fixed.detail, fixed.recipient)


def test_hard_bounces_suppress_every_mail() -> None:
    """ALL, hard_bounce, for good; the provider as source, status and diagnostic as detail."""
    s = suppression(_item(), key=KEY, settings=FeedbackSettings(), now=NOW)
    assert s is not None
    assert (Scope.ALL, "hard_bounce", "dsn", None) == (s.scope, s.reason, s.source, s.expires_at)
    assert address_digest("gone@example.org", KEY) == s.address_digest
    assert "G***@example.org" == s.address_hint
    assert "5.1.1 smtp; 550 5.1.1 <address>: User unknown" == s.detail


def test_complaints_suppress_optional_mail() -> None:
    """OPTIONAL, complaint: a password reset still goes."""
    s = suppression(
        _item(FeedbackKind.COMPLAINT, status="abuse", diagnostic=None, provider="arf"),
        key=KEY,
        settings=FeedbackSettings(),
        now=NOW,
    )
    assert s is not None
    assert (Scope.OPTIONAL, "complaint", "arf", "abuse") == (s.scope, s.reason, s.source, s.detail)


def test_soft_bounces_suppress_for_a_while_once_the_limit_is_reached() -> None:
    """Below the limit nothing; at it ALL, soft_bounces, expiring after the configured days."""
    settings = FeedbackSettings(soft_bounce_suppress_days=5)
    soft = _item(FeedbackKind.SOFT_BOUNCE, status="4.2.2")
    assert suppression(soft, key=KEY, settings=settings, now=NOW) is None
    s = suppression(soft, key=KEY, settings=settings, now=NOW, soft_limit_reached=True)
    assert s is not None
    assert (Scope.ALL, "soft_bounces", NOW + timedelta(days=5)) == (s.scope, s.reason, s.expires_at)
    assert f"soft:{address_digest('gone@example.org', KEY)}" == soft_counter(soft, KEY)


def test_what_never_suppresses() -> None:
    """A delivery; a redacted report; hard bounces and complaints when switched off."""
    off = FeedbackSettings(suppress_hard_bounces=False, suppress_complaints=False)
    assert [None, None, None, None] == [
        suppression(_item(FeedbackKind.DELIVERED), key=KEY, settings=FeedbackSettings(), now=NOW),
        suppression(_item(recipient=""), key=KEY, settings=FeedbackSettings(), now=NOW),
        suppression(_item(), key=KEY, settings=off, now=NOW),
        suppression(_item(FeedbackKind.COMPLAINT), key=KEY, settings=off, now=NOW),
    ]


def test_statuses_match_the_schema_and_both_versions_read_each_other() -> None:
    """Status and the Avro enum name the same symbols; an outcome written with the previous
    schema (schemas/history/) decodes with the current one, and a reader still on the
    previous one reads a correction's status as UNKNOWN (the enum's default)."""
    store = SchemaStore.load(ROOT / "schemas")
    current = store.reader(OUTCOME_SCHEMA)
    assert current is not None
    status_field = next(f for f in current.parsed["fields"] if f["name"] == "status")
    assert [s.value for s in Status] == status_field["type"]["symbols"]

    history = ROOT / "schemas" / "history" / "herald.outcomes.NotificationOutcome.v1.avsc"
    old_parsed = fastavro.parse_schema(json.loads(history.read_text(encoding="utf-8")))
    canonical = fastavro.schema.to_parsing_canonical_form(old_parsed)
    old = store.by_fingerprint(bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")))
    assert old is not None
    assert not old.current

    fixed = correction(_item(), OID, domain=DOMAIN, recipient=None, source=WHERE, processed_at=NOW)
    record = fixed.to_record() | {"status": "SENT"}  # the previous enum has no BOUNCED
    decoded = decode_outcome(encode_single_object(old, record), store)
    assert (OID, "SENT", "hard_bounce") == (
        decoded["outcome_id"],
        decoded["status"],
        decoded["reason"],
    )

    body = write_body(current, fixed.to_record())
    assert "UNKNOWN" == read_body(body, current.parsed, old.parsed)["status"]
    new = decode_outcome(OutcomeCodec(results_topic="r", schema=current).encode(fixed), store)
    assert "BOUNCED" == new["status"]


def test_the_trace_fields_and_the_previous_outcome_schema_read_each_other() -> None:
    """An outcome written with v2 (before the trace fields) reads with the current schema as
    having no trace; one written with the current schema reads with v2, the trace left out."""
    store = SchemaStore.load(ROOT / "schemas")
    current = store.reader(OUTCOME_SCHEMA)
    assert current is not None
    history = ROOT / "schemas" / "history" / "herald.outcomes.NotificationOutcome.v2.avsc"
    v2_parsed = fastavro.parse_schema(json.loads(history.read_text(encoding="utf-8")))
    canonical = fastavro.schema.to_parsing_canonical_form(v2_parsed)
    v2 = store.by_fingerprint(bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")))
    assert v2 is not None
    assert not v2.current

    fixed = correction(_item(), OID, domain=DOMAIN, recipient=None, source=WHERE, processed_at=NOW)
    traced = replace(
        fixed,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        parent_span_id="00f067aa0ba902b7",
        trace_state="rojo=1",
    )
    v2_names = {f["name"] for f in v2.parsed["fields"]}
    old_record = {k: v for k, v in traced.to_record().items() if k in v2_names}
    decoded = decode_outcome(encode_single_object(v2, old_record), store)
    assert (OID, None, None, None) == (
        decoded["outcome_id"],
        decoded["trace_id"],
        decoded["parent_span_id"],
        decoded["trace_state"],
    )

    read_old = read_body(write_body(current, traced.to_record()), current.parsed, v2.parsed)
    assert (OID, "BOUNCED") == (read_old["outcome_id"], read_old["status"])
    assert "trace_id" not in read_old
    new = decode_outcome(OutcomeCodec(results_topic="r", schema=current).encode(traced), store)
    assert ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "rojo=1") == (
        new["trace_id"],
        new["parent_span_id"],
        new["trace_state"],
    )
