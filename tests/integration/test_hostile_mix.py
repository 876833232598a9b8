"""A hostile mix on the real broker, with a password reset behind it: every record ends in
exactly one outcome per route (or one for the record), Herald stays up, and the reset goes
out. The figures (the reset's latency, the records' loop time) are printed for the record;
they are not asserted, since a loaded machine would make that a coin toss."""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.kafka.replay import Replay
from service.outcomes.records import decode_outcome
from service.testing import Received, SmtpServer
from tests.conftest import example_record
from tests.integration.conftest import create_topics, produce, running, wait_for
from tests.integration.test_end_to_end import _scrape

HOSTILE_VALUES = [
    "\r\nBcc: victim@example.com",
    "\u202eevil\u202c\x00",
    "javascript:alert(document.cookie)",
    "https://example.com/\r\nX: y",
    "-".join(["a"] * 1500),
    " " * 3000 + "é",
    "x" * 5000,
    "a" * 65 + "@example.com",
    "josé@exámple.com",
]


def _hostile(loaded: Loaded) -> list[tuple[str, bytes | None, bytes | None]]:
    """For each event type, a hostile value in a recipient field and in payload strings, in
    turn (about a hundred records), and bytes that are no event."""
    out: list[tuple[str, bytes | None, bytes | None]] = []
    fields = ("display_name", "locale", "time_zone", "email", "user_id")
    for i, event_type in enumerate(sorted(loaded.table.events)):
        schema = loaded.store.reader(loaded.table.events[event_type].schema_)
        assert schema is not None
        base = example_record(loaded, event_type)
        plantings = [("recipient", fields[(i + j) % len(fields)]) for j in range(2)]
        plantings += [("payload", k) for k, v in base["payload"].items() if isinstance(v, str)][:3]
        for where, key in plantings:
            data = copy.deepcopy(base)
            data["event_id"] = f"hostile-{len(out)}"
            data["occurred_at"] = datetime.now(UTC)
            data[where][key] = HOSTILE_VALUES[len(out) % len(HOSTILE_VALUES)]
            try:
                out.append((event_type, b"h", encode_single_object(schema, data)))
            except ValueError:  # an enum: no producer can write this
                continue
    out.append(("order.confirmed", b"g", b"\xc3\x01 garbage"))
    out.append(("order.confirmed", b"g", b"\x00" * 600_000))  # over max_record_bytes (below)
    return out


def _everything(settings: Any, loaded: Loaded, topic: str) -> list[dict[str, Any]]:
    """Every committed outcome of the results topic, up to its end as it is now."""
    k = settings.kafka
    replay = Replay(k.librdkafka(), k.topic_prefix + topic, f"read-{uuid.uuid4()}", 30)
    try:
        return [decode_outcome(r.value or b"", loaded.store) for r in replay.records()]
    finally:
        replay.close()


async def test_a_hostile_mix_gets_its_outcomes_and_a_reset_still_goes(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    settings = make_settings(processing={"max_record_bytes": 500_000})
    create_topics(settings)
    mix = _hostile(loaded)
    reset = example_record(loaded, "password.reset_requested")
    reset["event_id"] = "reset-behind-the-mix"
    reset["occurred_at"] = datetime.now(UTC)
    reset["recipient"]["email"] = "reset@example.com"
    schema = loaded.store.reader(loaded.table.events["password.reset_requested"].schema_)
    assert schema is not None
    async with running(settings) as herald:
        produce(settings, mix)
        produced = time.monotonic()
        produce(settings, [("password.reset_requested", b"r", encode_single_object(schema, reset))])

        def reset_mail() -> Received | None:
            return next((r for r in smtp.received if r.envelope_to == ["reset@example.com"]), None)

        await wait_for(lambda: reset_mail() is not None, timeout_s=60, what="the reset")
        got = reset_mail()
        assert got is not None

        async def settled() -> bool:
            _, text = await _scrape(herald.http_port or 0)
            consumed = sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("herald_records_consumed_total{")
            )
            return consumed >= len(mix) + 1 and 'herald_in_flight{lane="standard"} 0.0' in text

        deadline = time.monotonic() + 60
        while not await settled():
            assert time.monotonic() < deadline, "the mix was not consumed in time"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)  # a commit interval or five: the last transaction
        _, metrics = await _scrape(herald.http_port or 0)
    outcomes = _everything(settings, loaded, "notification.outcomes")
    by_record: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for o in outcomes:
        by_record.setdefault(
            (o["source_topic"], o["source_partition"], o["source_offset"]), []
        ).append(o)
    statuses = Counter((o["status"], o["reason"]) for o in outcomes)
    assert len(mix) + 1 == len(by_record), statuses
    for (topic, _, _), found in by_record.items():
        routes = len(loaded.table.routes[topic.removeprefix(settings.kafka.topic_prefix)])
        record_level = [o for o in found if o["notification_type"] is None]
        assert len(found) == (1 if record_level else routes), found
    assert 0 == statuses[("DEAD_LETTERED", "internal_error")]
    reset_outcome = next(o for o in outcomes if o["event_id"] == "reset-behind-the-mix")
    assert "SENT" == reset_outcome["status"]
    loop = [
        line
        for line in metrics.splitlines()
        if line.startswith("herald_record_loop_seconds_bucket")
        and ('le="0.1"' in line or "Inf" in line)
    ]
    print(  # the figures for the record
        f"\nhostile mix: {len(mix)} records, {len(outcomes)} outcomes; statuses "
        f"{dict(statuses)}; the reset accepted {got.ended - produced:.2f} s after it was "
        f"produced, behind the mix; loop time buckets {loop}"
    )
