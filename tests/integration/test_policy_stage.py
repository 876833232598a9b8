"""The policy stage on a real broker and a real SMTP server: preferences and suppressions on
their compacted topics, restored before Herald is ready, followed while it runs, and changed
from the command line."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from service.app import Loaded
from service.cli import build_parser
from service.events.schemas import encode_single_object
from service.outcomes.records import decode_outcome
from service.settings import Settings
from service.stores.consent import Preference
from service.stores.running import codecs, ensure_state_topics, state_topics
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
        assert ("SUPPRESSED", "opted_out") == _outcomes(loaded, later[4:])[
            ("activity.mention", "i***@example.com")
        ]
        samples = herald.metrics.registry.get_sample_value(
            "herald_policy_table_restore_seconds", {"table": "preferences"}
        )
        assert samples is not None


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
