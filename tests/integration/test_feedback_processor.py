"""Feedback closes the loop, on a real broker and a real SMTP server: a bounce or complaint about
a mail Herald sent publishes a correction of its outcome and a suppression, and the next mail
to that address is decided by it."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from service.app import Herald, Loaded
from service.feedback.intake import run_intake
from service.feedback.model import Feedback, FeedbackKind, feedback_codec
from service.feedback.processor import FeedbackProcessor
from service.feedback.publisher import FeedbackPublisher
from service.feedback.routes import FeedbackWebhooks
from service.feedback.signatures import SnsCertificates
from service.outcomes.records import decode_outcome
from service.settings import Settings
from service.settings.feedback import FeedbackSettings
from service.stores.running import codecs
from service.stores.suppressions import Scope, Suppression, address_digest
from tests.conftest import ADDRESS_KEY, ROOT
from tests.feedback_samples import TOPIC_ARN, rsa_certificate, ses_bounce, sns_envelope
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for
from tests.integration.test_feedback import _serving
from tests.integration.test_policy_stage import _event

DATA = ROOT / "tests" / "data" / "feedback"
RESULTS = "notification.outcomes"
SUPPRESSIONS = "notification.suppressions"
FEEDBACK = "mail.feedback"


@asynccontextmanager
async def _herald(settings: Settings) -> AsyncIterator[tuple[Herald, FeedbackProcessor]]:
    """Herald running, with the feedback processor `herald run` opens beside its lanes."""
    async with running(settings) as herald:
        assert herald.feedback is not None
        yield herald, herald.feedback


def _outcome(loaded: Loaded, m: Any) -> dict[str, Any]:
    return decode_outcome(m.value(), loaded.store)


def _with(loaded: Loaded, messages: list[Any], status: str) -> list[tuple[Any, dict[str, Any]]]:
    """The records of that status, with their decoded outcomes: a correction is keyed by its
    outcome id, the outcome it corrects by the event id, so they may be on other partitions."""
    decoded = [(m, _outcome(loaded, m)) for m in messages]
    return [(m, o) for m, o in decoded if o["status"] == status]


def _suppressions(loaded: Loaded, messages: list[Any]) -> list[Suppression]:
    _, codec = codecs(loaded.store)
    return [codec.decode(m.value()) for m in messages]


def _digest(email: str) -> str:
    return address_digest(email, ADDRESS_KEY.encode())


def _report(sample: str, tmp: Path, replacements: dict[str, str]) -> Path:
    """A sample report with its Message-ID, VERP token and recipient made this test's."""
    text = (DATA / sample).read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp / sample
    path.write_text(text, encoding="utf-8")
    return path


async def _intake(settings: Settings, path: Path) -> None:
    """`herald feedback <path>`, as the command runs it."""
    out = io.StringIO()
    assert 0 == await asyncio.to_thread(run_intake, settings, [path], out), out.getvalue()


async def _publish(settings: Settings, herald: Herald, items: list[Feedback]) -> None:
    """Feedback as the listener and the webhooks publish it."""
    codec = feedback_codec(herald.loaded.store)
    async with FeedbackPublisher(settings.kafka, settings.policy, codec) as publisher:
        await publisher.publish(items)


def _lag_ms(feedback: Any, result: Any) -> int:
    """Broker time from a feedback record to the record it led to."""
    return int(result.timestamp()[1] - feedback.timestamp()[1])


async def test_a_hard_bounce_corrects_the_outcome_and_suppresses_the_address(
    make_settings: Any, loaded: Loaded, tmp_path: Path
) -> None:
    """A DSN (5.1.1) read by `herald feedback` for the mail Herald sent: a BOUNCED correction
    with the same outcome id, a hard_bounce suppression, and the next mail is suppressed."""
    settings = make_settings()
    create_topics(settings)
    produce(settings, [_event(loaded, "order.confirmed", "u-b", "bounce@example.com")])
    async with _herald(settings) as (herald, _):
        sent = _outcome(loaded, (await read_topic(settings, RESULTS, 1))[0])
        assert "SENT" == sent["status"]
        oid, mid = sent["outcome_id"], sent["message_id"]
        domain = settings.mail.id_domain
        assert f"<{oid}@{domain}>" == mid
        report = _report(
            "dsn-hard-5.1.1.eml",
            tmp_path,
            {
                "a1b2c3d4e5f60718293a4b5c6d7e8f90": oid,
                "@mail.example.net>": f"@{domain}>",
                "nobody@example.org": "bounce@example.com",
            },
        )
        await _intake(settings, report)

        [(corrected, fixed)] = _with(loaded, await read_topic(settings, RESULTS, 2), "BOUNCED")
        assert {
            "outcome_id": oid,
            "status": "BOUNCED",
            "reason": "hard_bounce",
            "smtp_enhanced_code": "5.1.1",
            "recipient": "b***@example.com",
            "message_id": mid,
            "attempt": 0,
            "source_topic": settings.kafka.topic_prefix + FEEDBACK,
            "event_id": None,
        } == {
            k: fixed[k]
            for k in (
                "outcome_id",
                "status",
                "reason",
                "smtp_enhanced_code",
                "recipient",
                "message_id",
                "attempt",
                "source_topic",
                "event_id",
            )
        }
        assert "bounce@example.com" not in (fixed["detail"] or "")
        [s] = _suppressions(loaded, await read_topic(settings, SUPPRESSIONS, 1))
        assert (_digest("bounce@example.com"), Scope.ALL, "hard_bounce", "dsn", None) == (
            s.address_digest,
            s.scope,
            s.reason,
            s.source,
            s.expires_at,
        )
        [feedback] = await read_topic(settings, FEEDBACK, 1)
        print(f"feedback → correction: {_lag_ms(feedback, corrected)} ms")

        state = herald.policy
        assert state is not None
        await wait_for(
            lambda: state.tables.suppressions(_digest("bounce@example.com")),
            what="the suppression followed",
        )
        produce(settings, [_event(loaded, "order.confirmed", "u-b", "bounce@example.com")])
        [(_, later)] = _with(loaded, await read_topic(settings, RESULTS, 3), "SUPPRESSED")
        assert "suppressed_hard_bounce" == later["reason"]
        assert 1.0 == herald.metrics.registry.get_sample_value(
            "herald_feedback_processed_total", {"kind": "hard_bounce", "correlated": "true"}
        )


async def test_a_complaint_stops_optional_mail_only(
    make_settings: Any, loaded: Loaded, tmp_path: Path
) -> None:
    """An ARF complaint: a COMPLAINED correction, an OPTIONAL suppression; the next mention is
    suppressed_complaint while a password reset still goes."""
    settings = make_settings()
    create_topics(settings)
    produce(settings, [_event(loaded, "comment.mentioned", "u-c", "angry@example.com")])
    async with _herald(settings) as (herald, _):
        sent = _outcome(loaded, (await read_topic(settings, RESULTS, 1))[0])
        assert "SENT" == sent["status"]
        report = _report(
            "arf-complaint.eml",
            tmp_path,
            {
                "99990000aaaabbbbccccddddeeeeffff@mail.example.net": sent["message_id"][1:-1],
                "user@example.com": "angry@example.com",
            },
        )
        await _intake(settings, report)

        [(_, fixed)] = _with(loaded, await read_topic(settings, RESULTS, 2), "COMPLAINED")
        assert (sent["outcome_id"], "COMPLAINED", "complaint", "a***@example.com") == (
            fixed["outcome_id"],
            fixed["status"],
            fixed["reason"],
            fixed["recipient"],
        )
        [s] = _suppressions(loaded, await read_topic(settings, SUPPRESSIONS, 1))
        assert (Scope.OPTIONAL, "complaint", "arf") == (s.scope, s.reason, s.source)

        state = herald.policy
        assert state is not None
        await wait_for(
            lambda: state.tables.suppressions(_digest("angry@example.com")),
            what="the suppression followed",
        )
        produce(
            settings,
            [
                _event(loaded, "comment.mentioned", "u-c", "angry@example.com"),
                _event(loaded, "password.reset_requested", "u-c", "angry@example.com"),
            ],
        )
        results = [_outcome(loaded, m) for m in await read_topic(settings, RESULTS, 4)]
        later = sorted(
            (o["notification_type"], o["status"], o["reason"])
            for o in results
            if o["outcome_id"] != sent["outcome_id"]
        )
        assert [
            ("activity.mention", "SUPPRESSED", "suppressed_complaint"),
            ("security.password_reset", "SENT", None),
        ] == later


def _soft(feedback_id: str, message_id: str, email: str) -> Feedback:
    return Feedback(
        feedback_id=feedback_id,
        kind=FeedbackKind.SOFT_BOUNCE,
        recipient=email,
        provider="dsn",
        occurred_at=datetime.now(UTC),
        message_id=message_id,
        status="4.2.2",
        diagnostic="smtp; 452 4.2.2 mailbox full",
    )


@pytest.mark.parametrize("caps", ["sqlite", "redis"])
async def test_the_third_distinct_soft_bounce_suppresses_for_a_while(
    make_settings: Any, loaded: Loaded, redis_url: str, caps: str
) -> None:
    """Three soft bounces of one address (one repeated) in the window: a BOUNCED correction for
    each record, and one soft_bounces suppression expiring in 7 days, from the third distinct
    report only (the repeat is not counted)."""
    settings = make_settings(policy={"caps_backend": caps}, idempotency={"redis_url": redis_url})
    create_topics(settings)
    email = f"full-{uuid.uuid4().hex[:6]}@example.com"
    produce(settings, [_event(loaded, "order.confirmed", "u-s", email)])
    async with _herald(settings) as (herald, _):
        sent = _outcome(loaded, (await read_topic(settings, RESULTS, 1))[0])
        mid = sent["message_id"].strip("<>")
        reports = [_soft(f"dsn:soft-{n}", mid, email) for n in (1, 2, 2, 3)]
        before = datetime.now(UTC)
        await _publish(settings, herald, reports)

        results = await read_topic(settings, RESULTS, 5)
        corrections = [o for _, o in _with(loaded, results, "BOUNCED")]
        assert [(sent["outcome_id"], "soft_bounce", "4.2.2")] * 4 == [
            (c["outcome_id"], c["reason"], c["smtp_enhanced_code"]) for c in corrections
        ]
        [s] = _suppressions(loaded, await read_topic(settings, SUPPRESSIONS, 1))
        assert (Scope.ALL, "soft_bounces", _digest(email)) == (s.scope, s.reason, s.address_digest)
        assert s.expires_at is not None
        assert before + timedelta(days=7) <= s.expires_at <= datetime.now(UTC) + timedelta(days=7)
        assert 1.0 == herald.metrics.registry.get_sample_value(
            "herald_feedback_suppressions_total", {"reason": "soft_bounces"}
        )


async def test_deliveries_correct_only_and_foreign_mail_suppresses_only(
    make_settings: Any, loaded: Loaded
) -> None:
    """A delivery report: a DELIVERED correction, no suppression. A hard bounce of a mail
    Herald did not send (a foreign Message-ID): a suppression, no correction. A record that
    does not decode is counted and skipped."""
    settings = make_settings()
    create_topics(settings)
    produce(settings, [_event(loaded, "order.confirmed", "u-d", "happy@example.com")])
    async with _herald(settings) as (herald, processor):
        sent = _outcome(loaded, (await read_topic(settings, RESULTS, 1))[0])
        produce(settings, [(FEEDBACK, b"junk", b"not a feedback record")])
        now = datetime.now(UTC)
        await _publish(
            settings,
            herald,
            [
                Feedback(
                    feedback_id="dsn:delivered",
                    kind=FeedbackKind.DELIVERED,
                    recipient="happy@example.com",
                    provider="dsn",
                    occurred_at=now,
                    message_id=sent["message_id"].strip("<>"),
                    status="2.0.0",
                ),
                Feedback(
                    feedback_id="dsn:foreign",
                    kind=FeedbackKind.HARD_BOUNCE,
                    recipient="stranger@example.org",
                    provider="dsn",
                    occurred_at=now,
                    message_id=f"{uuid.uuid4().hex}@elsewhere.example",
                    status="5.1.1",
                ),
            ],
        )
        [(_, fixed)] = _with(loaded, await read_topic(settings, RESULTS, 2), "DELIVERED")
        assert (sent["outcome_id"], "DELIVERED", "delivered", "2.0.0") == (
            fixed["outcome_id"],
            fixed["status"],
            fixed["reason"],
            fixed["smtp_enhanced_code"],
        )
        [s] = _suppressions(loaded, await read_topic(settings, SUPPRESSIONS, 1))
        assert (_digest("stranger@example.org"), "hard_bounce") == (s.address_digest, s.reason)
        await wait_for(
            lambda: (processor.processed, processor.undecodable) == (2, 1),
            what="both reports processed and the junk skipped",
        )
        metric = herald.metrics.registry.get_sample_value
        assert (1.0, 1.0, 1.0) == (
            metric("herald_feedback_undecodable_total"),
            metric("herald_feedback_processed_total", {"kind": "delivered", "correlated": "true"}),
            metric(
                "herald_feedback_processed_total", {"kind": "hard_bounce", "correlated": "false"}
            ),
        )


async def test_an_ses_bounce_webhook_corrects_and_suppresses(
    make_settings: Any, loaded: Loaded
) -> None:
    """An SES bounce in a signed SNS notification, posted to the SES webhook for the mail
    Herald sent: a BOUNCED correction of its outcome, an `ses` hard_bounce suppression, and
    the next mail suppressed. The webhook runs as Herald's public listener mounts it, with
    the certificate fetch replaced (AWS is not reachable offline); the signature check is
    the real one."""
    settings = make_settings()
    create_topics(settings)
    email = "ses-bounce@example.com"
    produce(settings, [_event(loaded, "order.confirmed", "u-s", email)])
    key, pem = rsa_certificate()

    async def fetch(url: str) -> bytes:
        return pem

    async with _herald(settings) as (herald, _):
        sent = _outcome(loaded, (await read_topic(settings, RESULTS, 1))[0])
        assert "SENT" == sent["status"]
        bounce = ses_bounce()
        bounce["mail"]["headers"][1]["value"] = sent["message_id"]
        bounce["bounce"]["bouncedRecipients"][0]["emailAddress"] = email
        codec = feedback_codec(herald.loaded.store)
        group = FeedbackSettings(ses_topic_arns=(TOPIC_ARN,))
        async with FeedbackPublisher(settings.kafka, settings.policy, codec) as publisher:
            hooks = FeedbackWebhooks(group, publisher, certificates=SnsCertificates(fetch))
            async with (
                _serving(Starlette(routes=hooks.routes)) as base,
                httpx.AsyncClient(base_url=base, timeout=30) as client,
            ):
                answer = await client.post("/feedback/ses", json=sns_envelope(key, bounce))
                assert (200, {"published": 1}) == (answer.status_code, answer.json())

        [(_, fixed)] = _with(loaded, await read_topic(settings, RESULTS, 2), "BOUNCED")
        assert (sent["outcome_id"], "hard_bounce", "5.1.1") == (
            fixed["outcome_id"],
            fixed["reason"],
            fixed["smtp_enhanced_code"],
        )
        [s] = _suppressions(loaded, await read_topic(settings, SUPPRESSIONS, 1))
        assert (_digest(email), Scope.ALL, "hard_bounce", "ses") == (
            s.address_digest,
            s.scope,
            s.reason,
            s.source,
        )
        state = herald.policy
        assert state is not None
        await wait_for(lambda: state.tables.suppressions(_digest(email)), what="followed")
        produce(settings, [_event(loaded, "order.confirmed", "u-s", email)])
        [(_, later)] = _with(loaded, await read_topic(settings, RESULTS, 3), "SUPPRESSED")
        assert "suppressed_hard_bounce" == later["reason"]
