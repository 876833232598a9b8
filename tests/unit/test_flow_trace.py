"""The handler carries a record's trace context: into every log line of that record and of no
other, into its outcomes, onto its retry ticket and back from it; a traceparent that does not
read changes nothing but a counter."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import replace
from typing import Any

import pytest

from service.app import Loaded
from service.kafka.records import RawRecord
from service.testing import SmtpServer, record
from tests.unit.test_flow import Rig

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
PARENT = ("traceparent", f"00-{TRACE}-{SPAN}-01".encode())
STATE = ("tracestate", b"rojo=00f067aa0ba902b7")
Entries = list[MutableMapping[str, Any]]


@pytest.fixture
async def rig(loaded: Loaded) -> AsyncIterator[Rig]:
    with SmtpServer() as server:
        r = Rig(loaded, server.port, max_attempts=1)
        yield r
        await r.mailer.close()


def _traced(raw: RawRecord, *headers: tuple[str, bytes], offset: int) -> RawRecord:
    return replace(raw, headers=headers, offset=offset)


def _lines(entries: Entries, offset: int) -> Entries:
    return [e for e in entries if e.get("offset") == offset]


async def test_the_trace_reaches_the_outcome_and_every_log_line_of_the_record(
    rig: Rig, log_entries: Entries
) -> None:
    raw = _traced(rig.event("ada@example.com"), PARENT, STATE, offset=11)
    (outcome,) = rig.outcomes(await rig.handler.handle(raw))
    assert ("SENT", TRACE, SPAN, "rojo=00f067aa0ba902b7") == (
        outcome["status"],
        outcome["trace_id"],
        outcome["parent_span_id"],
        outcome["trace_state"],
    )
    lines = _lines(log_entries, 11)
    assert "record processed" in [e["event"] for e in lines]
    assert {(TRACE, SPAN)} == {(e.get("trace_id"), e.get("span_id")) for e in lines}


async def test_the_trace_does_not_leak_to_the_next_record_on_the_same_task(
    rig: Rig, log_entries: Entries
) -> None:
    """Handled one after the other in one task, as a test or a tool would: the second record,
    which has no traceparent, logs none."""
    await rig.handler.handle(_traced(rig.event("ada@example.com", "e-1"), PARENT, offset=1))
    await rig.handler.handle(_traced(rig.event("bob@example.com", "e-2"), offset=2))
    assert _lines(log_entries, 1)
    assert all("trace_id" in e for e in _lines(log_entries, 1))
    assert [] == [e for e in _lines(log_entries, 2) if "trace_id" in e or "span_id" in e]
    assert [] == [e for e in log_entries if "offset" not in e and "trace_id" in e]


async def test_records_in_flight_together_each_log_their_own_trace(
    rig: Rig, log_entries: Entries
) -> None:
    """As the lane runs them: one task per record, overlapping on the loop."""
    traces = [f"{i:032x}" for i in range(1, 6)]
    raws = [
        _traced(
            rig.event(f"user{i}@example.com", f"e-{i}"),
            ("traceparent", f"00-{t}-{SPAN}-01".encode()),
            offset=100 + i,
        )
        for i, t in enumerate(traces)
    ]
    handled = await asyncio.gather(*(asyncio.create_task(rig.handler.handle(r)) for r in raws))
    for i, (t, h) in enumerate(zip(traces, handled, strict=True)):
        (outcome,) = rig.outcomes(h)
        assert t == outcome["trace_id"]
        lines = _lines(log_entries, 100 + i)
        assert lines
        assert {t} == {e.get("trace_id") for e in lines}


async def test_an_invalid_traceparent_is_counted_and_the_mail_still_goes(
    rig: Rig, log_entries: Entries
) -> None:
    raw = _traced(
        rig.event("ada@example.com"), ("traceparent", b"00-not-a-trace\r\nX: y"), STATE, offset=7
    )
    (outcome,) = rig.outcomes(await rig.handler.handle(raw))
    assert ("SENT", None, None, None) == (
        outcome["status"],
        outcome["trace_id"],
        outcome["parent_span_id"],
        outcome["trace_state"],
    )
    assert 1.0 == rig.metrics.trace_context_invalid.labels("traceparent")._value.get()
    assert [] == [e for e in _lines(log_entries, 7) if "trace_id" in e]


async def test_a_retry_round_carries_the_trace_to_the_final_outcome(
    rig: Rig, log_entries: Entries
) -> None:
    """A transient refusal: the ticket carries the traceparent; the round that reads it logs
    and reports the same trace, on the original event's coordinates."""
    first = _traced(rig.event("temp@example.com"), PARENT, offset=21)
    (ticket,) = (await rig.handler.handle(first)).records
    assert PARENT in ticket.headers
    rounds = 0
    handled = None
    while handled is None or not rig.outcomes(handled):
        consumed = record(ticket.topic, ticket.value, key=ticket.key, headers=ticket.headers)
        handled = await rig.handler.handle(replace(consumed, offset=300 + rounds))
        ticket = handled.records[-1]
        rounds += 1
    (outcome,) = rig.outcomes(handled)
    assert ("FAILED", 21, TRACE, SPAN) == (
        outcome["status"],
        outcome["source_offset"],
        outcome["trace_id"],
        outcome["parent_span_id"],
    )
    (dead,) = [r for r in handled.records if r.topic == "dead"]
    assert PARENT in dead.headers
    retried = [e for e in log_entries if e.get("topic") == "herald.retry.60s"]
    assert retried
    assert {TRACE} == {e.get("trace_id") for e in retried}
