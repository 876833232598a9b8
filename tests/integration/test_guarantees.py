"""Delivery guarantees on the real broker and a real SMTP server: redeliveries deduplicated,
the RFC 1047 window reported as unknown, retries through the retry topics, and a mail server
outage pausing consumption instead of failing mail."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.testing import SmtpServer
from tests.conftest import example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_end_to_end import _outcomes, _scrape

TOPIC = "user.signed_up"


def _event(loaded: Loaded, event_id: str, email: str) -> bytes:
    record = example_record(loaded, TOPIC)
    record["event_id"] = event_id
    record["occurred_at"] = datetime.now(UTC)  # retry.max_age_s counts from here
    record["recipient"]["email"] = email
    schema = loaded.store.reader("herald.events.UserSignedUp")
    assert schema is not None
    return encode_single_object(schema, record)


async def test_redelivered_records_are_deduplicated_not_resent(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """The same records read again (here by a second consumer group sharing the store) end
    DEDUPLICATED with the first Message-ID, or UNKNOWN where the first try lost the reply
    after DATA; no second mail is sent."""
    settings = make_settings()
    create_topics(settings)
    produce(
        settings,
        [
            (TOPIC, b"a", _event(loaded, "dup-1", "ann@example.com")),
            (TOPIC, b"b", _event(loaded, "dup-2", "drop.bob@example.com")),
        ],
    )
    async with running(settings):
        first = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 2))
    assert {"SENT", "UNKNOWN"} == {o["status"] for o in first}
    assert 1 == len(smtp.received)

    again = settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"group_id": settings.kafka.group_id + "-again"}
            )
        }
    )
    async with running(again):
        everything = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 4))
    second = [o for o in everything if o["processed_at"] > max(f["processed_at"] for f in first)]
    by_event = {o["event_id"]: o for o in second}
    assert "DEDUPLICATED" == by_event["dup-1"]["status"]
    sent = next(o for o in first if o["status"] == "SENT")
    assert sent["message_id"] == by_event["dup-1"]["message_id"]
    assert "UNKNOWN" == by_event["dup-2"]["status"]
    assert 1 == len(smtp.received)  # nothing sent twice


async def test_transient_failures_go_through_a_retry_topic(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """451 three times (the quick in-process tries), then a round in herald.retry.1s: SENT,
    with exactly one outcome for the notification."""
    settings = make_settings(smtp={"max_attempts": 3})
    create_topics(settings)
    produce(settings, [(TOPIC, b"k", _event(loaded, "retry-1", "flaky.fay@example.com"))])
    async with running(settings) as herald:
        (retry,) = await read_topic(settings, "herald.retry.1s", 1)
        (outcome,) = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 1))
        _, metrics = await _scrape(herald.http_port or 0)
    headers = {k: v.decode() for k, v in retry.headers()}
    assert "account.activation" == headers["herald.retry.notification"]
    assert "1" == headers["herald.retry.round"]
    assert "SENT" == outcome["status"]
    assert f"{settings.kafka.topic_prefix}{TOPIC}" == outcome["source_topic"]  # the original
    assert 1 == len(smtp.received)
    assert 4 == smtp.handler.flaky_seen["flaky.fay@example.com"]
    assert "herald_retries_scheduled_total{topic=" in metrics


async def test_retries_exhausted_fail_once_with_a_dead_letter(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """Still 451 after every retry round: one FAILED outcome, a dead-letter copy, no mail."""
    settings = make_settings(smtp={"max_attempts": 2}, retry={"delays_s": [1, 1]})
    create_topics(settings)
    produce(settings, [(TOPIC, b"k", _event(loaded, "retry-2", "temp.tom@example.com"))])
    async with running(settings):
        (outcome,) = _outcomes(
            loaded, await read_topic(settings, "notification.outcomes", 1, timeout_s=30)
        )
        (dead,) = await read_topic(settings, "herald.dead-letter", 1)
    assert ("FAILED", "retries_exhausted", 451) == (
        outcome["status"],
        outcome["reason"],
        outcome["smtp_code"],
    )
    assert "retries_exhausted" == dict(dead.headers())["herald.reason"].decode()
    assert 6 == smtp.handler.rcpt_attempts  # 2 quick tries x (first pass + 2 rounds)
    assert [] == smtp.received


async def test_mail_server_outage_pauses_consumption_and_loses_nothing(
    make_settings: Any, loaded: Loaded
) -> None:
    """With the server down the breaker opens and the partitions pause; once it is back,
    every record is sent. No record fails or is scheduled for retry meanwhile."""
    from service.testing import free_port

    port = free_port()
    settings = make_settings(
        smtp={"port": port, "breaker_threshold": 2, "breaker_cooldown_s": 0.5, "timeout_s": 2}
    )
    create_topics(settings)
    produce(
        settings,
        [
            (TOPIC, f"k{i}".encode(), _event(loaded, f"down-{i}", f"u{i}@example.com"))
            for i in range(5)
        ],
    )
    async with running(settings) as herald:

        async def paused() -> bool:
            _, m = await _scrape(herald.http_port or 0)
            return "herald_smtp_breaker_open 1.0" in m and set(_paused(m).values()) == {1.0}

        for _ in range(100):
            if await paused():
                break
            await asyncio.sleep(0.1)
        assert await paused()
        with SmtpServer(port=port) as server:
            await wait_for(lambda: len(server.received) == 5, what="all five mails")
            outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 5))
            _, metrics = await _scrape(herald.http_port or 0)
    assert ["SENT"] * 5 == [o["status"] for o in outcomes]
    assert "herald_retries_scheduled_total{" not in metrics
    assert "herald_smtp_breaker_open 0.0" in metrics
    assert {"express": 0.0, "standard": 0.0, "retry": 0.0} == _paused(metrics)


def _paused(metrics: str) -> dict[str, float]:
    """herald_consumer_paused per lane (every lane pauses while the breaker is open)."""
    found = re.findall(r'^herald_consumer_paused\{lane="(\w+)"\} (\S+)$', metrics, re.M)
    return {lane: float(v) for lane, v in found}
