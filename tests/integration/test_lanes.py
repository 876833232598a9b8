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
from service.events.schemas import encode_single_object
from service.testing import SLOW_DATA_S, Received, SmtpServer
from tests.conftest import example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_end_to_end import _outcomes

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

        def otp() -> Received | None:
            return next((r for r in smtp.received if r.envelope_to == ["ada@example.com"]), None)

        await wait_for(
            lambda: otp() is not None, timeout_s=bulk * SLOW_DATA_S + 30, what="the code"
        )
        await wait_for(lambda: len(smtp.received) == bulk + 1, timeout_s=60, what="every mail")
        outcomes = _outcomes(loaded, await read_topic(settings, "notification.outcomes", bulk + 1))
    assert ["SENT"] * (bulk + 1) == [o["status"] for o in outcomes]
    # Judged on the server's clock: the test's own loop (shared with Herald) may notice the
    # first DATA late, and may see the code arrive late.
    code = otp()
    assert code is not None
    waited = code.ended - produced
    slow = [r for r in smtp.received if r.envelope_to[0].startswith("slow")]
    bulk_before = sum(r.ended < code.ended for r in slow)
    first = min(r.began for r in slow)
    timeline = f"code produced {produced - first:.1f} s after the first bulk DATA began"
    timeline += f", accepted {waited:.1f} s later; bulk accepted before it: {bulk_before}"
    if lanes == "critical":
        # Sent while the backlog was still stuck in DATA, without waiting for a bulk mail.
        assert waited < SLOW_DATA_S, timeline
        assert bulk_before < bulk, timeline
    else:
        # One consumer, one budget, one FIFO pool: the code waits behind the backlog, its DATA
        # begun only once a bulk DATA was over.
        assert bulk_before >= 1, timeline
        assert code.began >= min(r.ended for r in slow), timeline
