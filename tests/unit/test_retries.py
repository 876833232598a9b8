"""Retry tickets: what `schedule` writes, `ticket` reads back; what it did not write is refused."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from service.errors import MalformedTicket
from service.kafka.records import Outbound, RawRecord
from service.outcomes.retries import RetryPolicy
from service.settings import RetrySettings

ORIGINAL = RawRecord(
    topic="orders",
    partition=2,
    offset=41,
    key=b"k",
    value=b"event bytes",
    headers=(("traceparent", b"00-abc-def-01"), ("herald.reason", b"from an earlier pass")),
    timestamp_ms=1,
)


def _consumed(out: Outbound, offset: int = 7) -> RawRecord:
    """The retry record as the retry lane would consume it."""
    return RawRecord(
        topic=out.topic,
        partition=0,
        offset=offset,
        key=out.key,
        value=out.value,
        headers=out.headers,
    )


def test_a_ticket_reads_back_what_was_scheduled() -> None:
    policy = RetryPolicy(RetrySettings(delays_s=[60, 600]), "p.")
    before_ms = int(time.time() * 1000)
    record = policy.schedule(ORIGINAL, notification="order.receipt", rounds_done=1, reason="x")
    assert "p.herald.retry.600s" == record.topic
    ticket = policy.ticket(_consumed(record), {"orders"})
    assert ("order.receipt", 2) == (ticket.notification, ticket.round)
    assert before_ms + 600_000 <= ticket.not_before_ms <= int(time.time() * 1000) + 600_000
    assert ticket.not_before_ms == RetryPolicy.not_before_ms(_consumed(record))
    assert ("orders", 2, 41) == (
        ticket.original.topic,
        ticket.original.partition,
        ticket.original.offset,
    )
    assert b"event bytes" == ticket.original.value
    # The producer's headers travel on; Herald's own from earlier passes do not.
    assert (("traceparent", b"00-abc-def-01"),) == ticket.original.headers


def test_rounds_end_with_the_list_or_the_events_age() -> None:
    policy = RetryPolicy(RetrySettings(delays_s=[60, 600], max_age_s=3600))
    fresh = datetime.now(UTC)
    assert policy.rounds_left(0, fresh)
    assert policy.rounds_left(1, fresh)
    assert not policy.rounds_left(2, fresh)
    assert not policy.rounds_left(0, fresh - timedelta(hours=2))


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("herald.retry.notification", b"n"), ("herald.retry.round", b"1")),
        (
            ("herald.retry.notification", b"n"),
            ("herald.retry.round", b"one"),
            ("herald.retry.not_before_ms", b"0"),
            ("herald.source.topic", b"t"),
            ("herald.source.partition", b"0"),
            ("herald.source.offset", b"0"),
        ),
    ],
    ids=["none", "missing", "not-a-number"],
)
def test_a_ticket_that_herald_did_not_write_is_malformed(
    headers: tuple[tuple[str, bytes], ...],
) -> None:
    """Missing or unreadable headers: MalformedTicket (dead-lettered), never a crash."""
    raw = RawRecord(
        topic="herald.retry.60s", partition=0, offset=0, key=None, value=b"v", headers=headers
    )
    with pytest.raises(MalformedTicket):
        RetryPolicy(RetrySettings()).ticket(raw, {"t"})


def test_a_ticket_for_a_topic_herald_does_not_consume_is_malformed() -> None:
    """A forged ticket cannot make Herald read bytes as some other topic's events."""
    policy = RetryPolicy(RetrySettings())
    record = policy.schedule(ORIGINAL, notification="n", rounds_done=0, reason="x")
    with pytest.raises(MalformedTicket, match="does not consume"):
        policy.ticket(_consumed(record), {"payments"})
    beyond = policy.schedule(ORIGINAL, notification="n", rounds_done=2, reason="x")
    forged = [(k, b"9" if k == "herald.retry.round" else v) for k, v in beyond.headers]
    with pytest.raises(MalformedTicket, match="round 9"):
        policy.ticket(_consumed(replace(beyond, headers=tuple(forged))), {"orders"})


def test_an_unreadable_due_time_is_due_now() -> None:
    """So the record is read, and its ticket refused, rather than holding its partition."""
    raw = RawRecord(
        topic="herald.retry.60s",
        partition=0,
        offset=0,
        key=None,
        value=b"v",
        headers=(("herald.retry.not_before_ms", b"soon"),),
    )
    assert 0 == RetryPolicy.not_before_ms(raw)


@pytest.mark.parametrize(
    ("wait_s", "topic", "delay_s"),
    [(0.2, "herald.retry.60s", 60), (60, "herald.retry.60s", 60), (61, "herald.retry.600s", 600),
     (86_000, "herald.retry.600s", 600)],
)  # fmt: skip
def test_a_deferral_waits_in_the_topic_that_covers_it_and_uses_no_round(
    wait_s: float, topic: str, delay_s: int
) -> None:
    policy = RetryPolicy(RetrySettings(delays_s=[60, 600]))
    before_ms = int(time.time() * 1000)
    for rounds_done in (0, 1):
        record = policy.defer(
            ORIGINAL,
            notification="order.receipt",
            rounds_done=rounds_done,
            wait_s=wait_s,
            reason="paced_warmup_hour",
        )
        assert topic == record.topic
        ticket = policy.ticket(_consumed(record), {"orders"})
        assert rounds_done == ticket.round
        assert before_ms + delay_s * 1000 <= ticket.not_before_ms
        assert ticket.not_before_ms <= int(time.time() * 1000) + delay_s * 1000
