"""From a produced Avro record to a received MIME message and an outcome record, for real:
a Kafka broker, an SMTP server over TCP, and /metrics scraped over HTTP. The Confluent wire
format, through a real Schema Registry, is in test_schema_registry.py."""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.outcomes.records import decode_outcome
from service.testing import SmtpServer
from tests.conftest import body_part, example_record
from tests.integration.conftest import (
    committed,
    create_topics,
    end_offsets,
    produce,
    read_topic,
    running,
    wait_for,
)

EVENTS = ["order.confirmed", "user.signed_up", "login.suspicious"]


def _encoded(loaded: Loaded, event_type: str, **changes: Any) -> tuple[dict[str, Any], bytes]:
    record = example_record(loaded, event_type)
    for key, value in changes.items():
        if key.startswith("recipient_"):
            record["recipient"][key.removeprefix("recipient_")] = value
        else:
            record[key] = value
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return record, encode_single_object(schema, record)


def _outcomes(loaded: Loaded, messages: list[Any]) -> list[dict[str, Any]]:
    return [decode_outcome(m.value(), loaded.store) for m in messages]


async def _scrape(port: int, path: str = "/metrics") -> tuple[int, str]:
    """GET over real HTTP, from a thread: the server runs on this test's event loop."""

    def get() -> tuple[int, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()

    return await asyncio.to_thread(get)


async def test_each_event_type_reaches_the_inbox_and_the_results_topic(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded, log_entries: list[Any]
) -> None:
    """Three events → three correct mails (headers, both parts, locale) and three SENT outcomes."""
    settings = make_settings()
    create_topics(settings)
    records = {}
    batch = []
    for event_type in EVENTS:
        record, value = _encoded(loaded, event_type)
        records[record["event_id"]] = (event_type, record)
        batch.append((event_type, record["recipient"]["user_id"].encode(), value))
    produce(settings, batch)

    async with running(settings) as herald:
        await wait_for(lambda: len(smtp.received) >= 3, what="three mails")
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 3))
        for _ in range(100):  # librdkafka reports lag every statistics_interval_ms
            status, metrics = await _scrape(herald.http_port or 0)
            if "herald_consumer_lag{" in metrics:
                break
            await asyncio.sleep(0.1)

    # Herald's own log lines carry no address, even before the redaction processor runs.
    addresses = {"camille.martin@example.com", "alex.jordan@example.com", "priya.shah@example.com"}
    assert [] == [e for e in log_entries if any(a in str(e) for a in addresses)]
    processed = [e for e in log_entries if e["event"] == "record processed"]
    assert 3 == len(processed)
    assert set(records) == {e["event_id"] for e in processed}

    by_to = {r.envelope_to[0]: r.message for r in smtp.received}
    assert {
        "camille.martin@example.com",
        "alex.jordan@example.com",
        "priya.shah@example.com",
    } == set(by_to)
    receipt = by_to["camille.martin@example.com"]
    assert "Votre commande A-10293 est confirmée" == receipt["Subject"]
    assert "fr" == receipt["Content-Language"]
    assert "Camille Martin <camille.martin@example.com>" == receipt["To"]
    assert "Herald <no-reply@example.com>" == receipt["From"]
    assert "42,85\xa0€" in body_part(receipt, "plain").get_content()
    assert "42,85" in body_part(receipt, "html").get_content()
    activation = by_to["alex.jordan@example.com"]
    assert "Confirm your email address for Herald Demo" == activation["Subject"]
    assert (
        "https://app.example.com/activate?token=7Hq2vX9kLmP4"
        in body_part(activation, "plain").get_content()
    )
    alert = by_to["priya.shah@example.com"]
    assert alert["Subject"].startswith("Security alert")
    assert "Porto, Portugal" in body_part(alert, "html").get_content()

    assert {"SENT"} == {o["status"] for o in outcomes}
    by_event = {o["event_id"]: o for o in outcomes}
    assert set(records) == set(by_event)
    for event_id, (event_type, record) in records.items():
        o = by_event[event_id]
        assert event_type == o["event_type"]
        assert settings.kafka.topic_prefix + event_type == o["source_topic"]
        assert 250 == o["smtp_code"]
        assert 1 == o["attempt"]
        assert record["occurred_at"] == o["occurred_at"]
        assert "@example.com" in o["recipient"]
        assert record["recipient"]["email"] != o["recipient"]  # masked, never in clear
    message_ids = {m["Message-ID"] for m in by_to.values()}
    assert message_ids == {o["message_id"] for o in outcomes}

    assert 200 == status
    assert 'herald_notifications_total{notification="order.receipt",status="sent"} 1.0' in metrics
    assert 'herald_smtp_attempts_total{reply_class="2xx",result="accepted"} 3.0' in metrics
    assert "herald_event_to_accepted_seconds_bucket" in metrics
    consume_delays = {  # one observation per record taken, by the lane that took it
        line.split('lane="')[1].split('"')[0]: float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("herald_consume_delay_seconds_count{")
    }
    assert len(records) == sum(consume_delays.values())
    assert 0 == consume_delays.get("retry", 0)
    lag_topics = {
        line.split('topic="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("herald_consumer_lag{")
    }
    assert lag_topics <= set(herald.loaded.bindings) | {
        f"{settings.kafka.topic_prefix}herald.retry.{d}s" for d in (1, 2)
    }
    assert lag_topics


async def test_bad_records_are_dead_lettered_and_do_not_block_the_rest(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """Garbage, an unknown schema and a name over the string budget go to the dead-letter topic
    with their reason and coordinates; the good records behind them (same partition) are
    delivered, one with a CR/LF in its display name cleaned rather than refused, every record
    gets an outcome, and the committed offsets reach the end of the partition."""
    settings = make_settings()
    create_topics(settings)
    key = b"same-key-same-partition"
    _, v1 = _encoded(loaded, "user.signed_up", event_id="good-1")
    _, v2 = _encoded(loaded, "user.signed_up", event_id="good-2")
    _, oversized = _encoded(
        loaded, "user.signed_up", event_id="oversized", recipient_display_name="E" * 5000
    )
    _, injected = _encoded(
        loaded,
        "user.signed_up",
        event_id="inject",
        recipient_display_name="Eve\r\nBcc: all@example.com",
    )
    unknown_schema = b"\xc3\x01" + b"\x99" * 8 + b"\x00"
    produce(
        settings,
        [
            ("user.signed_up", key, v1),
            ("user.signed_up", key, b"\x00 not avro at all"),
            ("user.signed_up", key, unknown_schema),
            ("user.signed_up", key, oversized),
            ("user.signed_up", key, None),
            ("user.signed_up", key, injected),
            ("user.signed_up", key, v2),
        ],
        headers=[("trace-id", b"abc")],
    )

    async with running(settings) as herald:
        dead = await read_topic(settings, "herald.dead-letter", 4)
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 7))
        await wait_for(lambda: len(smtp.received) >= 3, what="the three good mails")
        _, metrics = await _scrape(herald.http_port or 0)
        ready_status, _ = await _scrape(herald.http_port or 0, "/readyz")
        ends = {p: end for p, end in end_offsets(settings, "user.signed_up").items() if end}
        await wait_for(
            lambda: ends == {p: committed(settings, "user.signed_up")[p] for p in ends},
            what="offsets committed to the end",
        )
    assert [7] == list(ends.values())

    assert ["alex.jordan@example.com"] * 3 == [r.envelope_to[0] for r in smtp.received]
    assert [m.get("Bcc") for m in (r.message for r in smtp.received)] == [None, None, None]
    assert "Eve Bcc: all@example.com" == smtp.received[1].message["To"].addresses[0].display_name
    by_offset = sorted(outcomes, key=lambda o: o["source_offset"])
    statuses = ["SENT", *["DEAD_LETTERED"] * 4, "SENT", "SENT"]
    assert statuses == [o["status"] for o in by_offset]
    assert ["decode_error", "decode_error", "too_large", "decode_error"] == [
        o["reason"] for o in by_offset[1:5]
    ]

    reasons = []
    for m in dead:
        h = {k: v.decode() for k, v in m.headers()}
        reasons.append(h["herald.reason"])
        assert settings.kafka.topic_prefix + "user.signed_up" == h["herald.source.topic"]
        assert "abc" == h["trace-id"]  # original headers kept
        assert h["herald.detail"]
        assert key == m.key()
    assert ["decode_error", "decode_error", "too_large", "decode_error"] == reasons
    assert b"\x00 not avro at all" == dead[0].value()  # bytes untouched, ready for redrive
    assert 200 == ready_status
    assert 'herald_dead_letters_total{reason="decode_error"} 3.0' in metrics
    assert 'herald_dead_letters_total{reason="too_large"} 1.0' in metrics
    assert (
        f'herald_decode_failures_total{{topic="{settings.kafka.topic_prefix}user.signed_up"}} 4.0'
        in metrics
    )


async def test_a_restart_resumes_from_committed_offsets_without_resending(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """After a graceful stop, the next instance of the group starts where the first stopped."""
    settings = make_settings()
    create_topics(settings)
    _, a = _encoded(loaded, "login.suspicious", event_id="first")
    produce(settings, [("login.suspicious", b"k", a)])
    async with running(settings):
        await wait_for(lambda: len(smtp.received) == 1, what="the first mail")
    _, b = _encoded(loaded, "login.suspicious", event_id="second")
    produce(settings, [("login.suspicious", b"k", b)])
    async with running(settings):
        await wait_for(lambda: len(smtp.received) == 2, what="the second mail")
        await read_topic(settings, "notification.outcomes", 2)
    assert 2 == len({r.message["Message-ID"] for r in smtp.received})
