"""Priority lanes on the real broker: critical mail is not queued behind a bulk backlog.

The bulk records go to `slow…@` recipients, whose DATA the test server answers only after
`SLOW_DATA_S`, and the standard lane may hold two records at once: it is full, paused, and its
connections busy. A one-time code produced then must still go out at once, through the
express lane's own consumer and the SMTP connection kept for express mail. The same run
without lanes shows the test can fail: the code waits for a bulk mail to finish first.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import pytest

from service.app import Loaded
from service.avro import encode_single_object
from tests.conftest import example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_end_to_end import _outcomes
from tests.smtp_server import SLOW_DATA_S, SmtpServer

BULK = "onboarding.step_due"  # priority low
CRITICAL = "login.otp_requested"  # priority critical


def _event(loaded: Loaded, event_type: str, event_id: str, email: str) -> bytes:
    record = example_record(loaded, event_type)
    record["event_id"] = event_id
    record["occurred_at"] = datetime.now(UTC)
    record["recipient"]["email"] = email
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return encode_single_object(schema, record)


@pytest.mark.parametrize("lanes", ["critical", "off"])
async def test_critical_mail_overtakes_a_stuck_bulk_backlog(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded, lanes: str
) -> None:
    settings = make_settings(
        smtp={"pool_size": 2, "express_slots": 1},
        processing={"max_in_flight": 2, "express_priority": lanes},
    )
    create_topics(settings)
    bulk = 4
    produce(
        settings,
        [
            (BULK, f"b{i}".encode(), _event(loaded, BULK, f"bulk-{i}", f"slow{i}@example.com"))
            for i in range(bulk)
        ],
    )
    async with running(settings):
        await wait_for(lambda: len(smtp.handler.data_started) >= 1, what="a bulk DATA begun")
        produced = time.monotonic()
        produce(settings, [(CRITICAL, b"c", _event(loaded, CRITICAL, "otp-1", "ada@example.com"))])

        def otp_received() -> bool:
            return any(r.envelope_to == ["ada@example.com"] for r in smtp.received)

        await wait_for(otp_received, timeout_s=bulk * SLOW_DATA_S + 30, what="the one-time code")
        waited = time.monotonic() - produced
        bulk_before = sum(r.envelope_to[0].startswith("slow") for r in smtp.received)
        await wait_for(lambda: len(smtp.received) == bulk + 1, timeout_s=60, what="every mail")
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", bulk + 1))
    assert ["SENT"] * (bulk + 1) == [o["status"] for o in outcomes]
    if lanes == "critical":
        # Sent while the first bulk mail was still in DATA: it waited for no bulk mail.
        assert 0 == bulk_before, f"{bulk_before} bulk mails went first ({waited:.1f} s)"
        assert waited < SLOW_DATA_S
    else:
        # One consumer, one budget, one FIFO pool: the code waits behind the backlog.
        assert bulk_before >= 1
        assert waited >= SLOW_DATA_S / 2
