"""Bounce and complaint mail → Feedback: RFC 3464 DSNs, RFC 5965 ARF, flufl.bounce's formats,
VERP, hostile input, and the record's Avro round trip."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.errors import FeedbackError
from service.events.schemas import SchemaStore
from service.feedback.model import (
    MAX_DIAGNOSTIC_CHARS,
    Feedback,
    FeedbackKind,
    bare_message_id,
    feedback_codec,
    scrub,
)
from service.feedback.reports import parse_report, verp_token
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data" / "feedback"
WHEN = datetime(2026, 12, 1, tzinfo=UTC)
CODEC = feedback_codec(SchemaStore.load(ROOT / "schemas"))


def _one(name: str, **kwargs: object) -> Feedback:
    items = parse_report((DATA / name).read_bytes(), received_at=WHEN, **kwargs)  # type: ignore[arg-type]
    assert 1 == len(items)
    return items[0]


def test_postfix_dsn_hard_bounce() -> None:
    """A 5.1.1 DSN is a hard bounce of its Original-Recipient, with the returned Message-ID."""
    f = _one("dsn-hard-5.1.1.eml")
    assert FeedbackKind.HARD_BOUNCE == f.kind
    assert "nobody@example.org" == f.recipient
    assert "dsn" == f.provider
    assert "5.1.1" == f.status
    assert "a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net" == f.message_id
    assert "a1b2c3d4e5f60718293a4b5c6d7e8f90" == f.verp_token
    assert datetime(2026, 11, 19, 10, 15, 1, tzinfo=UTC) == f.occurred_at
    assert f.diagnostic is not None
    assert "@" not in f.diagnostic
    assert "<address>: Recipient address rejected" in f.diagnostic


def test_delayed_dsn_is_a_soft_bounce() -> None:
    """Action: delayed with 4.2.2 is a soft bounce, dated by its Last-Attempt-Date."""
    f = _one("dsn-soft-4.2.2-delayed.eml")
    assert FeedbackKind.SOFT_BOUNCE == f.kind
    assert ("full@example.com", "4.2.2") == (f.recipient, f.status)
    assert "0f1e2d3c4b5a69788796a5b4c3d2e1f0@mail.example.net" == f.message_id
    assert datetime(2026, 11, 20, 7, 59, 58, tzinfo=UTC) == f.occurred_at


def test_delivered_dsn() -> None:
    f = _one("dsn-delivered.eml")
    assert (FeedbackKind.DELIVERED, "happy@example.com") == (f.kind, f.recipient)
    assert "11112222333344445555666677778888@mail.example.net" == f.message_id


def test_arf_complaint() -> None:
    """RFC 5965's example: a complaint about Original-Rcpt-To, VERP from Original-Mail-From."""
    f = _one("arf-complaint.eml")
    assert (FeedbackKind.COMPLAINT, "arf", "abuse") == (f.kind, f.provider, f.status)
    assert "user@example.com" == f.recipient
    assert "99990000aaaabbbbccccddddeeeeffff@mail.example.net" == f.message_id
    assert "99990000aaaabbbbccccddddeeeeffff" == f.verp_token


def test_arf_not_spam_is_not_a_complaint() -> None:
    raw = (
        (DATA / "arf-complaint.eml")
        .read_bytes()
        .replace(b"Feedback-Type: abuse", b"Feedback-Type: not-spam")
    )
    with pytest.raises(FeedbackError, match="not a complaint"):
        parse_report(raw)


def test_redacted_arf_keeps_the_message_id() -> None:
    """A report without Original-Rcpt-To and a redacted To still says which mail it was."""
    raw = (
        (DATA / "arf-complaint.eml")
        .read_bytes()
        .replace(b"Original-Rcpt-To: <user@example.com>\n", b"")
        .replace(b"To: <Undisclosed Recipients>\n", b"")
    )
    [f] = parse_report(raw)
    assert ("", "99990000aaaabbbbccccddddeeeeffff@mail.example.net") == (f.recipient, f.message_id)


def test_qmail_bounce_through_flufl_bounce() -> None:
    """A non-DSN bounce: the address from flufl.bounce, the Message-ID from the quoted copy."""
    f = _one("qmail-bounce.eml")
    assert (FeedbackKind.HARD_BOUNCE, "bounce") == (f.kind, f.provider)
    assert "gone@example.org" == f.recipient
    assert "cafebabecafebabecafebabecafebabe@mail.example.net" == f.message_id
    assert "cafebabecafebabecafebabecafebabe" == f.verp_token


def test_verp_token_from_the_envelope_and_prefix() -> None:
    """The SMTP envelope wins over headers, and the prefix is the configured one."""
    raw = (DATA / "dsn-delivered.eml").read_bytes()
    [f] = parse_report(raw, verp_prefix="fb", envelope_to=["FB+tok-123@Bounce.example.net"])
    assert "tok-123" == f.verp_token
    assert verp_token(["bounces+abc@x.example"], "fb") is None
    assert "abc" == verp_token(["<Bounces+abc@x.example>"], "bounces")


def test_feedback_ids_are_stable_and_distinct() -> None:
    """The same report gives the same id; another report another."""
    hard = _one("dsn-hard-5.1.1.eml").feedback_id
    assert hard == _one("dsn-hard-5.1.1.eml").feedback_id
    assert hard != _one("dsn-soft-4.2.2-delayed.eml").feedback_id
    assert 64 == len(hard)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("truncated-multipart.eml", "not a bounce or complaint"),
        ("binary-junk.eml", "not a bounce or complaint"),
    ],
)
def test_hostile_samples_give_a_clear_error(name: str, reason: str) -> None:
    with pytest.raises(FeedbackError, match=reason):
        parse_report((DATA / "hostile" / name).read_bytes())


def test_unknown_charsets_still_read() -> None:
    """Parts in charsets Python does not know are read as UTF-8 with replacements."""
    [f] = parse_report((DATA / "hostile" / "bad-charset.eml").read_bytes())
    assert "a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net" == f.message_id


def test_ten_megabytes_are_refused_unread() -> None:
    """A 10 MB message (made here, not stored in the repository) is over the limit."""
    raw = (DATA / "dsn-hard-5.1.1.eml").read_bytes() + b"x" * (10 * 1024 * 1024)
    with pytest.raises(FeedbackError, match="over the 5242880 taken"):
        parse_report(raw)


def test_a_delivery_status_part_without_recipients() -> None:
    raw = (DATA / "dsn-delivered.eml").read_bytes()
    cut = raw.replace(b"Final-Recipient: rfc822; happy@example.com\n", b"")
    with pytest.raises(FeedbackError, match="recipient"):
        parse_report(cut)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=4096))
def test_any_bytes_give_feedback_or_an_error(raw: bytes) -> None:
    """Whatever arrives, the parser answers with values that encode, or a FeedbackError."""
    try:
        items = parse_report(raw)
    except FeedbackError:
        return
    for item in items:
        CODEC.encode(item.to_record())


_SAMPLES = sorted(p.read_bytes() for p in DATA.glob("*.eml"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.sampled_from(_SAMPLES),
    st.integers(min_value=0, max_value=4000),
    st.integers(min_value=0, max_value=200),
    st.binary(max_size=64),
)
def test_damaged_reports_give_feedback_or_an_error(
    raw: bytes, at: int, cut: int, junk: bytes
) -> None:
    """Real reports with a slice replaced by junk: still values that encode (addresses kept
    out of diagnostics), or a FeedbackError."""
    damaged = raw[:at] + junk + raw[at + cut :]
    try:
        items = parse_report(damaged)
    except FeedbackError:
        return
    for item in items:
        assert item.diagnostic is None or "@" not in item.diagnostic
        CODEC.encode(item.to_record())


def test_scrub_removes_addresses_and_bounds_length() -> None:
    text = "550 <jane.doe@example.com> and bob@x.example.org said " + "y" * 5000
    out = scrub(text)
    assert out is not None
    assert "@" not in out
    assert out.startswith("550 <address> and <address> said")
    assert MAX_DIAGNOSTIC_CHARS == len(out)
    assert scrub("   ") is None


def test_bare_message_id() -> None:
    assert "a@b" == bare_message_id(" <a@b> ")
    assert "a@b" == bare_message_id("a@b")
    assert bare_message_id("<>") is None
    assert bare_message_id("a b@c") is None


def test_record_round_trips_through_the_avro_codec() -> None:
    """Every field survives encoding in the MailFeedback schema and decoding back."""
    f = _one("dsn-hard-5.1.1.eml")
    assert f == Feedback.from_record(CODEC.decode(CODEC.encode(f.to_record())))
    assert f.message_id is not None
    assert f.message_id.encode() == f.key


def test_key_falls_back_to_the_feedback_id() -> None:
    f = Feedback(
        feedback_id="fid",
        kind=FeedbackKind.COMPLAINT,
        recipient="",
        provider="arf",
        occurred_at=WHEN,
    )
    assert b"fid" == f.key


def test_samples_directory_is_as_documented() -> None:
    """The integration test counts on these files: five reports, one record each."""
    assert 5 == len(list(DATA.glob("*.eml")))
    assert Path(DATA / "hostile").is_dir()
