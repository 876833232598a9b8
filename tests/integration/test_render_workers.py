"""Herald with render workers, end to end on the real broker and SMTP server: the mail and the
outcomes are those of rendering on the event loop, and a bad record is still dead-lettered."""

from __future__ import annotations

import os
from typing import Any

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.outcomes.records import decode_outcome
from service.testing import SmtpServer
from tests.conftest import body_part, example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for

EVENTS = ["order.confirmed", "user.signed_up", "login.suspicious", "password.reset_requested"]


def _encoded(loaded: Loaded, event_type: str, **payload: Any) -> tuple[dict[str, Any], bytes]:
    record = example_record(loaded, event_type)
    record["payload"].update(payload)
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return record, encode_single_object(schema, record)


async def test_mail_rendered_in_workers_is_sent_and_accounted_for(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded
) -> None:
    settings = make_settings(processing={"render_workers": 2})
    create_topics(settings)
    batch = []
    for event_type in EVENTS:
        record, value = _encoded(loaded, event_type)
        batch.append((event_type, record["recipient"]["user_id"].encode(), value))
    # Found in a worker, it comes back as itself: the notification fails, not the record.
    _, hostile = _encoded(loaded, "user.signed_up", activation_url="javascript:alert(1)")
    batch.append(("user.signed_up", b"u-hostile", hostile))
    produce(settings, batch)

    async with running(settings) as herald:
        assert 2 == len(_render_workers())  # children of this process, running the module
        await wait_for(lambda: len(smtp.received) >= len(EVENTS), what="the mails")
        outcomes = [
            decode_outcome(m.value(), loaded.store)
            for m in await read_topic(settings, "notification.outcomes", len(EVENTS) + 1)
        ]
        assert herald.ready
    assert [] == _render_workers()  # stopped with Herald

    statuses = sorted(o["status"] for o in outcomes)
    assert ["FAILED"] + ["SENT"] * len(EVENTS) == statuses
    (bad,) = [o for o in outcomes if o["status"] == "FAILED"]
    assert "invalid_link" == bad["reason"]
    by_id = {r.message["Message-ID"]: r.message for r in smtp.received}
    assert {o["message_id"] for o in outcomes if o["status"] == "SENT"} == set(by_id)
    receipt = next(m for m in by_id.values() if m["To"].startswith("Camille"))
    assert "Votre commande A-10293 est confirmée" == receipt["Subject"]
    assert "42,85\xa0€" in body_part(receipt, "plain").get_content()


def _render_workers() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().split(b"\0")
        except (OSError, ValueError):
            continue
        if parent == os.getpid() and b"service.flow.workers" in command:
            found.append(pid)
    return found
