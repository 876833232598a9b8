"""The handler over real parts (SMTP server on loopback, the project's schemas, table and
templates) without Kafka: each record ends as the decision table says, and the idempotency
store follows the mail (claimed, in DATA, accepted, released)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from service.app import Loaded
from service.delivery.pool import Mailer
from service.events.decoder import EventDecoder
from service.events.schemas import encode_single_object
from service.flow.handler import Handled, Handler
from service.flow.messages import LocalMessages
from service.kafka.records import RawRecord
from service.metrics import Metrics
from service.outcomes import headers
from service.outcomes.records import OutcomeCodec, decode_outcome
from service.outcomes.retries import RetryPolicy
from service.policy.policy import Policy
from service.routing import idempotency_key
from service.settings import MailSettings, RetrySettings, SmtpSettings
from service.stores.idempotency import State
from service.testing import MemoryStore, SmtpServer, free_port, record
from tests.conftest import example_record, local_policy_state

EVENT = "user.signed_up"
NOTIFICATION = "account.activation"


class Rig:
    """A handler wired to a real SMTP server and an in-memory store."""

    def __init__(self, loaded: Loaded, port: int, **smtp: Any) -> None:
        self.loaded = loaded
        self.policy = local_policy_state(loaded, Path(tempfile.mkdtemp(prefix="herald-flow-")))
        metrics = self.metrics = Metrics()
        self.store = MemoryStore()
        self.retries = RetryPolicy(RetrySettings(delays_s=[60, 600]))
        settings = SmtpSettings(
            host="127.0.0.1",
            port=port,
            tls="none",
            timeout_s=5,
            retry_backoff_ms=1,
            breaker_threshold=2,
            breaker_cooldown_s=0.2,
            **smtp,
        )
        self.mailer = Mailer(settings, metrics)
        self.handler = Handler(
            decoder=EventDecoder(loaded.bindings, loaded.store),
            table=loaded.table,
            policy=Policy(self.store, self.policy, metrics),
            messages=LocalMessages(loaded.renderer, MailSettings()),
            mailer=self.mailer,
            store=self.store,
            codec=OutcomeCodec(
                results_topic="outcomes", schema=OutcomeCodec.outcome_schema(loaded.store)
            ),
            dead_letter_topic="dead",
            retries=self.retries,
            smtp=settings,
            metrics=metrics,
        )

    def event(self, email: str, event_id: str = "e-1", event_type: str = EVENT) -> RawRecord:
        data = example_record(self.loaded, event_type)
        data["event_id"] = event_id
        data["occurred_at"] = datetime.now(UTC)
        data["recipient"]["email"] = email
        schema = self.loaded.store.reader(self.loaded.table.events[event_type].schema_)
        assert schema is not None
        return record(event_type, encode_single_object(schema, data), key=b"k", offset=5)

    def outcomes(self, handled: Handled) -> list[dict[str, Any]]:
        return [
            decode_outcome(r.value or b"", self.loaded.store)
            for r in handled.records
            if r.topic == "outcomes"
        ]

    def key(self, email: str, event_id: str = "e-1") -> str:
        return idempotency_key(event_id, NOTIFICATION, email)


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
async def rig(loaded: Loaded, smtp: SmtpServer) -> AsyncIterator[Rig]:
    r = Rig(loaded, smtp.port, max_attempts=3)
    yield r
    await r.mailer.close()


async def test_an_event_is_sent_once_and_remembered(rig: Rig, smtp: SmtpServer) -> None:
    handled = await rig.handler.handle(rig.event("ada@example.com"))
    (outcome,) = rig.outcomes(handled)
    assert ("SENT", 250, 1) == (outcome["status"], outcome["smtp_code"], outcome["attempt"])
    assert ["ada@example.com"] == [r.envelope_to[0] for r in smtp.received]
    assert State.ACCEPTED is rig.store.state(rig.key("ada@example.com"))

    again = rig.outcomes(await rig.handler.handle(rig.event("ada@example.com")))
    assert [("DEDUPLICATED", "already_accepted", outcome["message_id"])] == [
        (o["status"], o["reason"], o["message_id"]) for o in again
    ]
    assert 1 == len(smtp.received)


async def test_a_permanent_refusal_is_not_retried(rig: Rig, smtp: SmtpServer) -> None:
    handled = await rig.handler.handle(rig.event("perm@example.com"))
    (outcome,) = rig.outcomes(handled)
    assert ("FAILED", "smtp_permanent", 550, 1) == (
        outcome["status"],
        outcome["reason"],
        outcome["smtp_code"],
        outcome["attempt"],
    )
    assert 1 == smtp.handler.rcpt_attempts
    assert State.NEW is rig.store.state(rig.key("perm@example.com"))  # released


async def test_a_transient_refusal_is_tried_then_handed_to_a_retry_round(
    rig: Rig, smtp: SmtpServer
) -> None:
    """Three tries here (max_attempts), then a ticket to the first retry topic, no outcome."""
    handled = await rig.handler.handle(rig.event("temp@example.com"))
    assert [] == rig.outcomes(handled)
    (ticket,) = handled.records
    assert "herald.retry.60s" == ticket.topic
    meta = headers.decode(ticket.headers)
    assert (NOTIFICATION, "1", "smtp_transient") == (
        meta["retry.notification"],
        meta["retry.round"],
        meta["retry.reason"],
    )
    assert 3 == smtp.handler.rcpt_attempts
    assert State.NEW is rig.store.state(rig.key("temp@example.com"))


async def test_the_last_round_fails_the_mail_and_keeps_the_bytes(rig: Rig) -> None:
    """A ticket of the last round that fails again: FAILED, and the event dead-lettered."""
    first = rig.event("temp@example.com")
    ticket = first
    for _ in range(2):  # two rounds are configured
        (out,) = (await rig.handler.handle(ticket)).records
        ticket = record(out.topic, out.value, key=out.key, headers=out.headers)
    handled = await rig.handler.handle(ticket)
    (outcome,) = rig.outcomes(handled)
    assert ("FAILED", "retries_exhausted") == (outcome["status"], outcome["reason"])
    assert (first.topic, first.offset) == (outcome["source_topic"], outcome["source_offset"])
    (dead,) = [r for r in handled.records if r.topic == "dead"]
    assert first.value == dead.value
    assert "deliver" == headers.decode(dead.headers)["stage"]


async def test_a_reply_lost_after_data_is_unknown_and_never_resent(
    rig: Rig, smtp: SmtpServer
) -> None:
    """RFC 1047: the relay may have the mail; the redelivered record must not send it again."""
    (outcome,) = rig.outcomes(await rig.handler.handle(rig.event("drop@example.com")))
    assert ("UNKNOWN", "reply_lost") == (outcome["status"], outcome["reason"])
    assert State.IN_DATA is rig.store.state(rig.key("drop@example.com"))
    (again,) = rig.outcomes(await rig.handler.handle(rig.event("drop@example.com")))
    assert ("UNKNOWN", "reply_lost") == (again["status"], again["reason"])
    assert 1 == len(smtp.handler.data_started)


async def test_bytes_that_are_no_event_are_dead_lettered_with_one_outcome(rig: Rig) -> None:
    handled = await rig.handler.handle(record(EVENT, b"garbage", offset=9))
    dead, outcome_record = handled.records
    (outcome,) = rig.outcomes(handled)
    assert ("DEAD_LETTERED", "decode_error", None) == (
        outcome["status"],
        outcome["reason"],
        outcome["notification_type"],
    )
    assert b"garbage" == dead.value
    meta = headers.decode(dead.headers)
    assert ("decode", EVENT, "9") == (meta["stage"], meta["source.topic"], meta["source.offset"])
    assert "outcomes" == outcome_record.topic


async def test_a_false_condition_is_suppressed_without_a_claim(rig: Rig) -> None:
    """document.shared to someone with an account: the invitation route does not apply."""
    handled = await rig.handler.handle(rig.event("ada@example.com", event_type="document.shared"))
    statuses = {(o["notification_type"], o["status"]) for o in rig.outcomes(handled)}
    assert ("share.invitation", "SUPPRESSED") in statuses
    assert ("share.document_shared", "SENT") in statuses


async def test_a_store_out_of_reach_is_waited_for(rig: Rig, smtp: SmtpServer) -> None:
    """The WAIT of the table: nothing is sent without the store, and nothing is lost."""
    rig.store.down = True
    handling = asyncio.create_task(rig.handler.handle(rig.event("ada@example.com")))
    await asyncio.sleep(0.5)
    assert not handling.done()
    assert [] == smtp.received
    rig.store.down = False
    (outcome,) = rig.outcomes(await handling)
    assert "SENT" == outcome["status"]


async def test_a_relay_down_is_waited_for_without_using_up_tries(loaded: Loaded) -> None:
    """Refused connections open the breaker; once the relay is back the mail goes, on its
    first try."""
    port = free_port()
    rig = Rig(loaded, port, max_attempts=1)
    try:
        handling = asyncio.create_task(rig.handler.handle(rig.event("ada@example.com")))
        for _ in range(100):
            if rig.mailer.holding:
                break
            await asyncio.sleep(0.05)
        assert rig.mailer.holding
        assert not handling.done()
        with SmtpServer(port=port) as server:
            (outcome,) = rig.outcomes(await asyncio.wait_for(handling, 10))
        assert ("SENT", 1) == (outcome["status"], outcome["attempt"])
        assert 1 == len(server.received)
        assert not rig.mailer.holding
    finally:
        await rig.mailer.close()


async def test_a_retry_record_without_a_readable_ticket_is_dead_lettered(rig: Rig) -> None:
    handled = await rig.handler.handle(record("herald.retry.60s", b"x", offset=3))
    (outcome,) = rig.outcomes(handled)
    assert ("DEAD_LETTERED", "malformed_ticket") == (outcome["status"], outcome["reason"])
    assert ("herald.retry.60s", 3) == (outcome["source_topic"], outcome["source_offset"])
    assert "retry" == headers.decode(handled.records[0].headers)["stage"]


class Flaky:
    """Messages that raise an unforeseen error `failures` times, then build (a bug on cue)."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def build(self, n: Any, at: Any = None) -> Any:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("boom with ada@example.com in it")
        return await self.inner.build(n, at)

    async def close(self) -> None:
        return None


async def test_an_unforeseen_error_is_tried_again_then_the_mail_goes(
    rig: Rig, smtp: SmtpServer
) -> None:
    """Two failures of three allowed tries: the mail still goes, and both are counted."""
    rig.handler._messages = Flaky(rig.handler._messages, failures=2)
    (outcome,) = rig.outcomes(await rig.handler.handle(rig.event("ada@example.com")))
    assert "SENT" == outcome["status"]
    assert 2.0 == rig.metrics.internal_errors.labels("render")._value.get()


async def test_an_unforeseen_error_that_persists_is_dead_lettered_not_a_crash(
    rig: Rig, smtp: SmtpServer
) -> None:
    """The record boundary: one outcome (`internal_error`), the bytes kept, nothing sent."""
    rig.handler._messages = Flaky(rig.handler._messages, failures=100)
    first = rig.event("ada@example.com")
    handled = await rig.handler.handle(first)
    (outcome,) = rig.outcomes(handled)
    assert ("DEAD_LETTERED", "internal_error") == (outcome["status"], outcome["reason"])
    assert "a***@example.com" in outcome["detail"]  # masked in the outcome
    (dead,) = [r for r in handled.records if r.topic == "dead"]
    assert first.value == dead.value
    assert [] == smtp.received
    assert 3.0 == rig.metrics.internal_errors.labels("render")._value.get()


async def test_an_unforeseen_error_while_decoding_gives_the_record_one_outcome(rig: Rig) -> None:
    class Broken(EventDecoder):
        async def decode(self, topic: str, value: bytes | None) -> Any:
            raise KeyError("not what a decoder raises")

    rig.handler._decoder = Broken(rig.loaded.bindings, rig.loaded.store)
    handled = await rig.handler.handle(rig.event("ada@example.com"))
    (outcome,) = rig.outcomes(handled)
    assert ("DEAD_LETTERED", "internal_error", None) == (
        outcome["status"],
        outcome["reason"],
        outcome["notification_type"],
    )
