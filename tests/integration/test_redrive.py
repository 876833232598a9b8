"""`herald redrive`: dead letters go back to their source topic once the cause is fixed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.app import Loaded, load
from service.outcomes.redrive import Selection, redrive
from service.testing import SmtpServer
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_end_to_end import _outcomes
from tests.integration.test_guarantees import TOPIC, _event


async def test_redrive_after_a_fix_sends_once_and_only_what_was_selected(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded, tmp_path: Path
) -> None:
    """A route whose condition names a field the event lacks dead-letters the record; after
    the table is fixed, redriving `routing_error` sends it; the garbage record is left alone;
    a second redrive finds nothing new; redriving everything again from the beginning sends
    nothing twice (DEDUPLICATED)."""
    broken = tmp_path / "routing.yaml"
    broken.write_text(
        loaded.table.path.read_text().replace(
            "        priority: critical\n\n  login.suspicious",
            "        priority: critical\n"
            "        when: \"payload.referrer == 'partner'\"\n\n  login.suspicious",
        )
    )
    settings = make_settings(routing_file=broken)
    create_topics(settings)
    produce(
        settings,
        [(TOPIC, b"k", _event(loaded, "redrive-1", "rita@example.com")), (TOPIC, b"g", b"garbage")],
    )
    async with running(settings):
        dead = await read_topic(settings, "herald.dead-letter", 2)
    assert {"routing_error", "decode_error"} == {
        dict(m.headers())["herald.reason"].decode() for m in dead
    }

    fixed = settings.model_copy(update={"routing_file": loaded.table.path})
    bound = frozenset(load(fixed).bindings)
    routing_errors = Selection(reasons=frozenset({"routing_error"}))
    dry = redrive(fixed, routing_errors, bound, dry_run=True)
    assert ({"routing_error": 1}, 1) == (dict(dry.redriven), dry.skipped)
    report = redrive(fixed, routing_errors, bound)
    assert {"routing_error": 1} == dict(report.redriven)
    assert {} == dict(redrive(fixed, Selection(), bound).redriven)  # progress was committed
    later = Selection(since=datetime.now(UTC) + timedelta(hours=1))
    assert 0 == sum(redrive(fixed, later, bound, from_beginning=True).redriven.values())

    async with running(fixed):
        await wait_for(lambda: len(smtp.received) == 1, what="the redriven mail")
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 3))
        assert {"routing_error": 1, "decode_error": 1} == dict(
            redrive(fixed, Selection(), bound, from_beginning=True).redriven
        )
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", 5))
    statuses = sorted(o["status"] for o in outcomes)
    assert ["DEAD_LETTERED", "DEAD_LETTERED", "DEAD_LETTERED", "DEDUPLICATED", "SENT"] == statuses
    assert ["rita@example.com"] == [r.envelope_to[0] for r in smtp.received]
