"""Feedback intake end to end against the real broker: `herald feedback` over the sample
files, the bounce SMTP listener over real SMTP, and signed webhooks over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from service.events.schemas import SchemaStore
from service.feedback.listener import BounceListener
from service.feedback.model import Feedback, FeedbackKind, feedback_codec
from service.feedback.publisher import FeedbackPublisher
from service.feedback.routes import SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP, FeedbackWebhooks
from service.feedback.signatures import SnsCertificates
from service.kafka.admin import ensure_topics
from service.settings import Settings
from service.settings.feedback import FeedbackSettings
from service.testing import free_port
from tests.conftest import ROOT, project_settings
from tests.feedback_samples import (
    MAILGUN_KEY,
    TOPIC_ARN,
    mailgun_payload,
    rsa_certificate,
    sendgrid_events,
    sendgrid_keys,
    sendgrid_sign,
    ses_bounce,
    sns_envelope,
)
from tests.integration.conftest import read_topic

DATA = ROOT / "tests" / "data" / "feedback"
ORIGINAL = "a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net"
TOPIC = "mail.feedback"


@pytest.fixture
def settings(kafka_bootstrap: str) -> Settings:
    """Settings with a feedback topic of this test's own, created up front."""
    prefix = f"fb-{uuid.uuid4().hex[:8]}."
    s = project_settings(kafka={"bootstrap_servers": kafka_bootstrap, "topic_prefix": prefix})
    ensure_topics(s.kafka.librdkafka(), [prefix + TOPIC], partitions=3)
    return s


def _codec() -> Any:
    return feedback_codec(SchemaStore.load(ROOT / "schemas"))


async def _published(settings: Settings, count: int) -> list[Feedback]:
    """The records on the feedback topic (exactly `count`), decoded, by feedback id."""
    codec = _codec()
    records = await read_topic(settings, TOPIC, count)
    out = []
    for r in records:
        item = Feedback.from_record(codec.decode(r.value()))
        assert (item.message_id or item.feedback_id).encode() == r.key()
        out.append(item)
    return sorted(out, key=lambda f: f.feedback_id)


def _publisher(settings: Settings, **kwargs: Any) -> FeedbackPublisher:
    return FeedbackPublisher(settings.kafka, settings.policy, _codec(), **kwargs)


# herald feedback <path>


def _herald_feedback(settings: Settings, *paths: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HERALD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "HERALD_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
        "HERALD_SCHEMAS_DIR": str(ROOT / "schemas"),
        "HERALD_ROUTING_FILE": str(ROOT / "deploy" / "routing.yaml"),
        "HERALD_TEMPLATES_DIR": str(ROOT / "templates"),
        "HERALD_LOG__LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "service", "feedback", *paths],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_cli_publishes_every_sample_report(settings: Settings) -> None:
    """`herald feedback tests/data/feedback/`: five reports, five records that decode."""
    done = await asyncio.to_thread(_herald_feedback, settings, str(DATA))
    assert 0 == done.returncode, done.stderr
    lines = done.stdout.splitlines()
    assert 6 == len(lines), done.stdout
    assert "5 reports read, 5 records published" in lines[-1]
    assert "n***@example.org" in done.stdout
    assert "nobody@example.org" not in done.stdout
    items = await _published(settings, 5)
    assert {
        FeedbackKind.HARD_BOUNCE: 2,
        FeedbackKind.SOFT_BOUNCE: 1,
        FeedbackKind.DELIVERED: 1,
        FeedbackKind.COMPLAINT: 1,
    } == {k: sum(i.kind == k for i in items) for k in FeedbackKind}
    assert ORIGINAL in {i.message_id for i in items}


async def test_cli_reports_unreadable_messages_and_goes_on(settings: Settings) -> None:
    """Hostile files are reported with their reason and counted; the readable one is
    published; the exit status is 1."""
    missing = str(DATA / "no-such-file.eml")
    done = await asyncio.to_thread(_herald_feedback, settings, str(DATA / "hostile"), missing)
    assert 1 == done.returncode
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    assert 3 == len(failed), done.stdout
    assert any("binary-junk.eml: not a bounce or complaint" in line for line in failed)
    assert "1 reports read, 1 records published" in done.stdout
    assert "3 failed" in done.stdout
    [item] = await _published(settings, 1)
    assert ORIGINAL == item.message_id


async def test_cli_reads_a_maildir(settings: Settings, tmp_path: Any) -> None:
    import mailbox

    box = mailbox.Maildir(tmp_path / "Maildir", create=True)
    for name in ("dsn-delivered.eml", "arf-complaint.eml"):
        box.add((DATA / name).read_bytes())
    done = await asyncio.to_thread(_herald_feedback, settings, str(tmp_path / "Maildir"))
    assert 0 == done.returncode, done.stdout + done.stderr
    kinds = {i.kind for i in await _published(settings, 2)}
    assert {FeedbackKind.DELIVERED, FeedbackKind.COMPLAINT} == kinds


# The bounce SMTP listener


@asynccontextmanager
async def _listener(
    settings: Settings, publisher: FeedbackPublisher, **fields: Any
) -> AsyncIterator[int]:
    group = FeedbackSettings(bounce_domain="bounce.example.net", smtp_port=0, **fields)
    async with BounceListener(group, publisher) as listener:
        assert listener.port is not None
        yield listener.port


def _send(port: int, rcpt: str, raw: bytes) -> dict[str, tuple[int, bytes]]:
    """Over SMTP as an MTA sends a bounce: null sender, CRLF line ends (RFC 5321 2.3.8)."""
    wire = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail("", [rcpt], wire)


async def test_listener_publishes_before_answering_250(settings: Settings) -> None:
    """A DSN to the VERP address over real SMTP: 250, and its record is on the topic with
    the token of the envelope recipient."""
    raw = (DATA / "dsn-soft-4.2.2-delayed.eml").read_bytes()
    async with _publisher(settings) as publisher, _listener(settings, publisher) as port:
        refused = await asyncio.to_thread(_send, port, "bounces+tok-42@bounce.example.net", raw)
        assert {} == refused
        assert 1 == publisher.published
    [item] = await _published(settings, 1)
    assert (FeedbackKind.SOFT_BOUNCE, "tok-42") == (item.kind, item.verp_token)


async def test_listener_refuses_other_domains_and_unreadable_mail(settings: Settings) -> None:
    """550 at RCPT for another domain, 554 at DATA for what is not a report; nothing published."""
    raw = (DATA / "dsn-hard-5.1.1.eml").read_bytes()
    async with _publisher(settings) as publisher, _listener(settings, publisher) as port:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            await asyncio.to_thread(_send, port, "bounces+x@elsewhere.example", raw)
        assert 550 == refused.value.recipients["bounces+x@elsewhere.example"][0]
        junk = (DATA / "hostile" / "truncated-multipart.eml").read_bytes()
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            await asyncio.to_thread(_send, port, "bounces+x@bounce.example.net", junk)
        assert 554 == data_error.value.smtp_code
    await read_topic(settings, TOPIC, 0)


async def test_listener_refuses_a_report_over_the_size_limit(settings: Settings) -> None:
    """552 for a message over feedback.max_report_bytes, announced as SIZE (RFC 1870)."""
    raw = (DATA / "dsn-hard-5.1.1.eml").read_bytes()
    assert len(raw) > 1024
    async with (
        _publisher(settings) as publisher,
        _listener(settings, publisher, max_report_bytes=1024) as port,
    ):
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await asyncio.to_thread(_send, port, "bounces+x@bounce.example.net", raw)
        assert 552 == refused.value.smtp_code
        assert 0 == publisher.published


async def test_listener_answers_451_when_kafka_does_not_acknowledge(settings: Settings) -> None:
    """A broker that is not there: the bounce is refused for now, so the MTA keeps it."""
    nowhere = project_settings(
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}", "topic_prefix": "fb-none."}
    )
    raw = (DATA / "dsn-hard-5.1.1.eml").read_bytes()
    async with (
        _publisher(nowhere, timeout_s=2) as publisher,
        _listener(nowhere, publisher) as port,
    ):
        with pytest.raises(smtplib.SMTPDataError) as data_error:
            await asyncio.to_thread(_send, port, "bounces+x@bounce.example.net", raw)
        assert 451 == data_error.value.smtp_code
        assert 0 == publisher.published


# Webhooks over real HTTP


@asynccontextmanager
async def _serving(app: Starlette) -> AsyncIterator[str]:
    """The app under uvicorn on a free loopback port, in this loop."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _fetch_never(url: str) -> bytes:
    raise AssertionError(f"no certificate should be fetched here ({url})")


@asynccontextmanager
async def _webhooks(
    settings: Settings, group: FeedbackSettings, certificates: SnsCertificates | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, FeedbackPublisher]]:
    async with _publisher(settings) as publisher:
        hooks = FeedbackWebhooks(
            group, publisher, certificates=certificates or SnsCertificates(_fetch_never)
        )
        async with (
            _serving(Starlette(routes=hooks.routes)) as base,
            httpx.AsyncClient(base_url=base, timeout=30) as client,
        ):
            yield client, publisher


async def test_signed_sendgrid_and_mailgun_webhooks_publish(settings: Settings) -> None:
    """200 for each signed batch, and its feedback events on the topic."""
    key, public = sendgrid_keys()
    group = FeedbackSettings(sendgrid_public_key=public, mailgun_signing_key=MAILGUN_KEY)
    body = json.dumps(sendgrid_events()).encode()
    ts = str(int(time.time()))
    async with _webhooks(settings, group) as (client, _):
        sent = await client.post(
            "/feedback/sendgrid",
            content=body,
            headers={SENDGRID_SIGNATURE: sendgrid_sign(key, body, ts), SENDGRID_TIMESTAMP: ts},
        )
        assert (200, {"published": 4}) == (sent.status_code, sent.json())
        mailed = await client.post("/feedback/mailgun", json=mailgun_payload())
        assert (200, {"published": 1}) == (mailed.status_code, mailed.json())
    items = await _published(settings, 5)
    assert {"sendgrid": 4, "mailgun": 1} == {
        p: sum(i.provider == p for i in items) for p in ("sendgrid", "mailgun")
    }
    assert "mailgun:mg-failed-0001" in {i.feedback_id for i in items}


async def test_bad_signatures_are_refused_and_nothing_is_published(settings: Settings) -> None:
    key, public = sendgrid_keys()
    group = FeedbackSettings(
        sendgrid_public_key=public,
        mailgun_signing_key=MAILGUN_KEY,
        postmark_user="herald",
        postmark_password="s3cret",
        ses_topic_arns=(TOPIC_ARN,),
    )
    body = json.dumps(sendgrid_events()).encode()
    ts = str(int(time.time()))
    async with _webhooks(settings, group) as (client, publisher):
        forged = await client.post(
            "/feedback/sendgrid",
            content=body + b" ",
            headers={SENDGRID_SIGNATURE: sendgrid_sign(key, body, ts), SENDGRID_TIMESTAMP: ts},
        )
        assert 401 == forged.status_code
        other_key = await client.post(
            "/feedback/mailgun", json=mailgun_payload(key="not-the-signing-key")
        )
        assert 401 == other_key.status_code
        no_auth = await client.post("/feedback/postmark", json={"RecordType": "Bounce"})
        assert 401 == no_auth.status_code
        foreign = await client.post("/feedback/ses", json={"TopicArn": "arn:aws:sns:x"})
        assert 403 == foreign.status_code
        junk = await client.post(
            "/feedback/mailgun", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert 400 == junk.status_code
        assert 0 == publisher.published
    await read_topic(settings, TOPIC, 0)


async def test_postmark_with_basic_auth(settings: Settings) -> None:
    group = FeedbackSettings(postmark_user="herald", postmark_password="s3cret")
    event = {
        "RecordType": "Bounce",
        "ID": 42,
        "Type": "HardBounce",
        "Email": "nobody@example.org",
        "BouncedAt": "2026-11-19T10:15:03Z",
        "Metadata": {"herald-message-id": ORIGINAL},
    }
    async with _webhooks(settings, group) as (client, _):
        answer = await client.post("/feedback/postmark", json=event, auth=("herald", "s3cret"))
        assert 200 == answer.status_code
    [item] = await _published(settings, 1)
    assert ("postmark:bounce:42", ORIGINAL) == (item.feedback_id, item.message_id)


async def test_ses_notification_signed_by_sns(settings: Settings) -> None:
    """A signed subscription confirmation is confirmed, then an SES bounce inside a signed SNS
    notification is published, a tampered one refused. The fetch (certificate, SubscribeURL)
    is replaced because AWS's host is not reachable offline; the URL checks and the RSA
    verification are the real ones."""
    key, pem = rsa_certificate()
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return pem

    group = FeedbackSettings(ses_topic_arns=(TOPIC_ARN,))
    envelope = sns_envelope(key, ses_bounce())
    subscribe = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t0"
    confirmation = sns_envelope(
        key, {}, Type="SubscriptionConfirmation", SubscribeURL=subscribe, Token="t0"
    )
    async with _webhooks(settings, group, SnsCertificates(fetch)) as (client, _):
        confirmed = await client.post("/feedback/ses", json=confirmation)
        assert (200, {"published": 0}) == (confirmed.status_code, confirmed.json())
        tampered = {**envelope, "Message": envelope["Message"].replace("5.1.1", "5.1.2")}
        refused = await client.post("/feedback/ses", json=tampered)
        assert 401 == refused.status_code
        answer = await client.post("/feedback/ses", json=envelope)
        assert (200, {"published": 1}) == (answer.status_code, answer.json())
    [item] = await _published(settings, 1)
    assert (FeedbackKind.HARD_BOUNCE, "ses", ORIGINAL) == (
        item.kind,
        item.provider,
        item.message_id,
    )
