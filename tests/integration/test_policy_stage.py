"""The policy stage on a real broker and a real SMTP server: preferences and suppressions on
their compacted topics, restored before Herald is ready, followed while it runs, and changed
from the command line."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import confluent_kafka
import pytest

from service.app import Loaded
from service.cli import build_parser
from service.events.schemas import encode_single_object
from service.kafka.admin import ensure_state_topics, state_topics
from service.outcomes.records import decode_outcome
from service.settings import Settings
from service.stores.consent import Preference
from service.stores.running import codecs
from service.stores.suppressions import Scope, Suppression, address_digest, address_hint
from service.testing import SmtpServer
from service.tools.state_admin import publish
from tests.conftest import ADDRESS_KEY, example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for

NOW = datetime.now(UTC)


def _event(loaded: Loaded, event_type: str, user_id: str, email: str) -> tuple[str, bytes, bytes]:
    record = example_record(loaded, event_type)
    record["event_id"] = str(uuid.uuid4())
    record["recipient"]["user_id"] = user_id
    record["recipient"]["email"] = email
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return event_type, user_id.encode(), encode_single_object(schema, record)


def _opt_out(loaded: Loaded, settings: Settings, user_id: str, scope: str) -> None:
    codec, _ = codecs(loaded.store)
    p = Preference(user_id=user_id, scope=scope, subscribed=False, updated_at=NOW, source="test")
    publish(settings, [(state_topics(settings)[0], p.key, codec.encode(p))])


def _bounced(loaded: Loaded, settings: Settings, email: str) -> None:
    _, codec = codecs(loaded.store)
    s = Suppression(
        address_digest=address_digest(email, ADDRESS_KEY.encode()),
        address_hint=address_hint(email),
        scope=Scope.ALL,
        reason="hard_bounce",
        source="dsn",
        created_at=NOW,
        detail="5.1.1",
    )
    publish(settings, [(state_topics(settings)[1], s.key, codec.encode(s))])


def _outcomes(loaded: Loaded, messages: list[Any]) -> dict[tuple[str, str], tuple[str, Any]]:
    out = {}
    for m in messages:
        o = decode_outcome(m.value(), loaded.store)
        out[(o["notification_type"], o["recipient"])] = (o["status"], o["reason"])
    return out


async def test_choices_and_suppressions_decide_what_goes(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """Restored before ready: an opted-out user's mention is suppressed while their password
    reset goes; a hard-bounced address gets nothing. Followed while running: a later opt-out
    stops the next mail."""
    settings = make_settings()
    create_topics(settings)
    ensure_state_topics(settings)
    _opt_out(loaded, settings, "u-out", "all")
    _bounced(loaded, settings, "gone@example.com")
    produce(
        settings,
        [
            _event(loaded, "comment.mentioned", "u-out", "out@example.com"),
            _event(loaded, "password.reset_requested", "u-out", "out@example.com"),
            _event(loaded, "order.confirmed", "u-gone", "gone@example.com"),
            _event(loaded, "comment.mentioned", "u-in", "in@example.com"),
        ],
    )
    async with running(settings) as herald:
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 4))
        assert {
            ("activity.mention", "o***@example.com"): ("SUPPRESSED", "opted_out"),
            ("security.password_reset", "o***@example.com"): ("SENT", None),
            ("order.receipt", "g***@example.com"): ("SUPPRESSED", "suppressed_hard_bounce"),
            ("activity.mention", "i***@example.com"): ("SENT", None),
        } == outcomes
        assert {"out@example.com", "in@example.com"} == {
            to for m in smtp.received for to in m.envelope_to
        }

        _opt_out(loaded, settings, "u-in", "category:activity")
        state = herald.policy
        assert state is not None
        await wait_for(lambda: state.tables.choices("u-in"), what="the opt-out followed")
        produce(settings, [_event(loaded, "comment.mentioned", "u-in", "in@example.com")])
        later = await read_topic(settings, "notification.outcomes", 5)
        # Partitions are read in no set order: the two mentions of u-in by their outcomes.
        mentions = sorted(
            (o["status"], o["reason"] or "")
            for o in (decode_outcome(m.value(), loaded.store) for m in later)
            if (o["notification_type"], o["recipient"]) == ("activity.mention", "i***@example.com")
        )
        assert [("SENT", ""), ("SUPPRESSED", "opted_out")] == mentions
        samples = herald.metrics.registry.get_sample_value(
            "herald_policy_table_restore_seconds", {"table": "preferences"}
        )
        assert samples is not None


async def _first(settings: Settings, topic: str) -> Any:
    """The first committed record of a topic (a deferred mail is deferred again and again)."""
    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([settings.kafka.topic_prefix + topic])
    try:
        for _ in range(300):
            m = await asyncio.to_thread(c.poll, 0.2)
            if m is not None and m.error() is None:
                return m
        raise AssertionError(f"nothing on {topic}")
    finally:
        c.close()


def _cli(settings: Settings, *argv: str) -> None:
    args: argparse.Namespace = build_parser().parse_args(list(argv))
    assert 0 == args.fn(settings, args)


def test_suppress_and_forget_from_the_command_line(
    make_settings: Any, loaded: Loaded, capsys: pytest.CaptureFixture[str]
) -> None:
    """`herald suppress add/show/list/remove` and `herald forget` change and read the topics."""
    settings = make_settings()
    _opt_out(loaded, settings, "u-9", "all")
    _opt_out(loaded, settings, "u-9", "category:report")
    _cli(settings, "suppress", "add", "Nine@Example.com", "--scope", "optional", "--days", "30")
    capsys.readouterr()
    _cli(settings, "suppress", "show", "nine@example.com")
    shown = capsys.readouterr().out
    assert "N***@example.com\tOPTIONAL\tmanual\tcli" in shown
    assert "active" in shown
    assert "nine@example.com" not in shown.lower().replace("n***", "")
    _cli(settings, "suppress", "list")
    assert "OPTIONAL\tmanual" in capsys.readouterr().out
    _cli(settings, "suppress", "remove", "nine@example.com")
    _cli(settings, "suppress", "show", "nine@example.com")
    assert "is not suppressed" in capsys.readouterr().out.splitlines()[-1]

    _cli(settings, "suppress", "add", "nine@example.com")
    capsys.readouterr()
    _cli(settings, "forget", "u-9", "--email", "nine@example.com")
    report = capsys.readouterr().out
    assert "preferences removed: 2 ['all', 'category:report']" in report
    assert "suppressions removed: 1 ['ALL:manual']" in report
    _cli(settings, "forget", "u-9", "--email", "nine@example.com")
    again = capsys.readouterr().out
    assert "preferences removed: 0" in again
    assert "suppressions removed: 0" in again


async def test_pace_holds_the_relay_rate_in_process(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """40 mails under a relay limit of 10/s (burst 3): all sent, none deferred to a topic,
    and the relay sees them no faster than the limit allows (well over 100/s without it)."""
    settings = make_settings(pace={"relay": {"rate": "10/s", "burst": 3}, "hold_s": 5})
    create_topics(settings)
    produce(
        settings,
        [_event(loaded, "comment.mentioned", f"u-{i}", f"p{i}@example.com") for i in range(40)],
    )
    async with running(settings) as herald:
        await wait_for(lambda: len(smtp.received) >= 40, what="forty mails")
        deferred = herald.metrics.registry.get_sample_value(
            "herald_pace_deferred_total", {"limit": "relay"}
        )
    ends = sorted(m.ended for m in smtp.received)
    achieved = (len(ends) - 3) / (ends[-1] - ends[0])
    print(f"achieved {achieved:.2f}/s under a limit of 10/s (burst 3)")
    assert achieved <= 10 * 1.5
    assert deferred is not None
    assert deferred > 0
    assert [] == await read_topic(settings, "herald.retry.1s", 0, timeout_s=1)


async def test_past_the_warm_up_limit_bulk_waits_in_the_retry_topics(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """A ramp of 5 an hour with 40% reserved: 3 mentions go, the 4th is deferred through the
    retry topics (no outcome, no round used), and a one-time code still goes."""
    today = datetime.now(UTC).date().isoformat()
    settings = make_settings(
        pace={
            "warmup": [{"day": 0, "per_hour": 5}],
            "warmup_start": today,
            "critical_share": 0.4,
            "hold_s": 0.5,
        }
    )
    create_topics(settings)
    mentions = [
        _event(loaded, "comment.mentioned", f"u-{i}", f"w{i}@example.com") for i in range(4)
    ]
    produce(settings, mentions)
    async with running(settings):
        outcomes = await read_topic(settings, "notification.outcomes", 3)
        ticket = await _first(settings, "herald.retry.2s")
        produce(settings, [_event(loaded, "login.otp_requested", "u-c", "code@example.com")])
        code = await read_topic(settings, "notification.outcomes", 4)
    assert ["SENT"] * 3 == [decode_outcome(m.value(), loaded.store)["status"] for m in outcomes]
    meta = dict(ticket.headers())
    assert b"paced_warmup_hour" == meta["herald.retry.reason"]
    assert b"0" == meta["herald.retry.round"]
    # Partitions are read in no set order: the code's outcome by its type.
    [last] = [
        o
        for o in (decode_outcome(m.value(), loaded.store) for m in code)
        if o["notification_type"] == "security.one_time_code"
    ]
    assert "SENT" == last["status"]
