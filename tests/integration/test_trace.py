"""W3C Trace Context on the real broker: a record's traceparent reaches its outcome, its log
lines, its dead-letter copy and its retry ticket, and the retried attempt's outcome; one that
does not read is counted and changes nothing else."""

from __future__ import annotations

from typing import Any

from service.app import Loaded
from service.testing import SmtpServer
from tests.integration.conftest import create_topics, produce, read_topic, running
from tests.integration.test_end_to_end import _outcomes, _scrape
from tests.integration.test_guarantees import TOPIC, _event

TRACE = "0af7651916cd43dd8448eb211c80319c"
SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{SPAN}-01".encode()
TRACESTATE = b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
Headers = list[tuple[str, str | bytes | None]]


async def test_the_trace_reaches_outcomes_logs_and_dead_letters(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded, log_entries: list[Any]
) -> None:
    """A traced event is sent with the trace in its outcome and log lines; a traced poison
    record's dead-letter copy and outcome keep it; an event whose traceparent is hostile is
    sent all the same, with no trace and the invalid header counted."""
    settings = make_settings()
    create_topics(settings)
    traced: Headers = [("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)]
    produce(settings, [(TOPIC, b"a", _event(loaded, "traced-1", "ann@example.com"))], traced)
    produce(settings, [(TOPIC, b"b", b"\x00 not avro")], traced)
    hostile: Headers = [("traceparent", b"00-" + b"f" * 600), ("traceparent", TRACEPARENT)]
    produce(settings, [(TOPIC, b"c", _event(loaded, "hostile-1", "bo@example.com"))], hostile)

    async with running(settings) as herald:
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 3))
        (dead,) = await read_topic(settings, "herald.dead-letter", 1)
        _, metrics = await _scrape(herald.http_port or 0)

    by_event = {o["event_id"]: o for o in outcomes}
    fields = ("status", "trace_id", "parent_span_id", "trace_state")
    assert ("SENT", TRACE, SPAN, TRACESTATE.decode()) == tuple(
        by_event["traced-1"][f] for f in fields
    )
    assert ("DEAD_LETTERED", TRACE, SPAN, TRACESTATE.decode()) == tuple(
        by_event[None][f] for f in fields
    )
    assert ("SENT", None, None, None) == tuple(by_event["hostile-1"][f] for f in fields)
    assert 2 == len(smtp.received)
    assert [] == [r for r in smtp.received if TRACE in r.data.decode("utf-8", "replace")]

    dead_headers = dict(dead.headers())
    assert (TRACEPARENT, TRACESTATE) == (dead_headers["traceparent"], dead_headers["tracestate"])
    assert "decode_error" == dead_headers["herald.reason"].decode()
    assert 'herald_trace_context_invalid_total{header="traceparent"} 1.0' in metrics

    processed = {e.get("event_id"): e for e in log_entries if e["event"] == "record processed"}
    assert (TRACE, SPAN) == (processed["traced-1"]["trace_id"], processed["traced-1"]["span_id"])
    assert "trace_id" not in processed["hostile-1"]
    dead_lettered = [e for e in log_entries if e["event"] == "record dead-lettered"]
    assert [TRACE] == [e.get("trace_id") for e in dead_lettered]


async def test_a_retried_mail_keeps_its_trace_through_the_retry_topic(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded, log_entries: list[Any]
) -> None:
    """451 three times, then a round in herald.retry.1s: the ticket carries the traceparent,
    and the round's log lines and the final SENT outcome carry the same trace."""
    settings = make_settings(smtp={"max_attempts": 3})
    create_topics(settings)
    produce(
        settings,
        [(TOPIC, b"k", _event(loaded, "traced-retry", "flaky.fay@example.com"))],
        [("traceparent", TRACEPARENT)],
    )
    async with running(settings):
        (retry,) = await read_topic(settings, "herald.retry.1s", 1)
        (outcome,) = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 1))

    assert TRACEPARENT == dict(retry.headers())["traceparent"]
    assert ("SENT", TRACE, SPAN, None) == (
        outcome["status"],
        outcome["trace_id"],
        outcome["parent_span_id"],
        outcome["trace_state"],
    )
    retry_topic = settings.kafka.topic_prefix + "herald.retry.1s"
    (round_line,) = [
        e for e in log_entries if e["event"] == "record processed" and e.get("topic") == retry_topic
    ]
    assert (1, TRACE, SPAN) == (
        round_line["retry_round"],
        round_line["trace_id"],
        round_line["span_id"],
    )
    assert 1 == len(smtp.received)
