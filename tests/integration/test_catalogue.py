"""The whole catalogue on the real broker and SMTP: every event type, in both locales."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.routing import Category
from service.testing import SmtpServer
from tests.conftest import example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_end_to_end import _outcomes


def _in_locale(record: dict[str, Any], locale: str) -> None:
    """Every recipient-like record of the event (envelope or payload) speaks `locale`."""
    record["recipient"]["locale"] = locale
    for value in record["payload"].values():
        if isinstance(value, dict) and "email" in value and "locale" in value:
            value["locale"] = locale


async def test_every_notification_in_both_locales(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    """Each example event, once with an English and once with a French recipient: every route
    gives one outcome; routes whose condition holds are SENT in that language, optional mail
    carries one-click unsubscribe and the others do not."""
    settings = make_settings()
    create_topics(settings)
    batch, expected = [], {}
    for event_type, spec in loaded.table.events.items():
        schema = loaded.store.reader(spec.schema_)
        assert schema is not None
        for locale in ("en", "fr"):
            record = example_record(loaded, event_type)
            record["event_id"] = str(uuid.uuid4())
            record["occurred_at"] = datetime.now(UTC)
            _in_locale(record, locale)
            batch.append(
                (event_type, record["event_id"].encode(), encode_single_object(schema, record))
            )
            expected[record["event_id"]] = (event_type, locale)
    produce(settings, batch)
    routes = {t: len(r) for t, r in loaded.table.routes.items()}
    total = sum(routes[t] for t, _ in expected.values())
    categories = {r.spec.type: r.spec.category for rs in loaded.table.routes.values() for r in rs}

    async with running(settings):
        outcomes = _outcomes(
            loaded, await read_topic(settings, "notification.outcomes", total, timeout_s=120)
        )
        sent = [o for o in outcomes if o["status"] == "SENT"]
        await wait_for(lambda: len(smtp.received) == len(sent), what="every SENT mail")

    assert {"SENT", "SUPPRESSED"} >= {o["status"] for o in outcomes}, outcomes
    assert set(expected) == {o["event_id"] for o in outcomes}
    for o in outcomes:
        event_type, locale = expected[o["event_id"]]
        assert event_type == o["event_type"]
        if o["status"] == "SENT":
            assert locale == o["locale"], o
    assert set(routes) == {o["event_type"] for o in sent}  # every event type sends
    by_mid = {r.message["Message-ID"]: r.message for r in smtp.received}
    for o in sent:
        msg = by_mid[o["message_id"]]
        assert o["locale"] == msg["Content-Language"]
        optional = categories[o["notification_type"]] in (
            Category.ACTIVITY,
            Category.REPORT,
            Category.REMINDER,
        )
        assert optional == (msg["List-Unsubscribe"] is not None), o["notification_type"]
        if optional:
            assert "List-Unsubscribe=One-Click" == msg["List-Unsubscribe-Post"]
