"""Provider webhooks → Feedback, and the signature checks in front of them."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import FeedbackError
from service.events.schemas import SchemaStore
from service.feedback.model import Feedback, FeedbackKind, feedback_codec
from service.feedback.signatures import (
    SnsCertificates,
    check_basic_auth,
    check_mailgun_signature,
    check_sendgrid_signature,
    check_sns_signature,
    check_sns_url,
)
from service.feedback.webhooks import (
    mailgun_feedback,
    postmark_feedback,
    sendgrid_feedback,
    ses_feedback,
)
from tests.conftest import ROOT
from tests.feedback_samples import (
    CERT_URL,
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

ORIGINAL = "a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net"
CODEC = feedback_codec(SchemaStore.load(ROOT / "schemas"))


def _encodes(items: list[Feedback]) -> bool:
    """Every item is a Feedback that the MailFeedback codec takes."""
    for item in items:
        assert isinstance(item, Feedback)
        CODEC.encode(item.to_record())
    return True


# SES via SNS


def _ses(message: dict[str, Any]) -> list[Feedback]:
    return ses_feedback(
        {"Type": "Notification", "MessageId": "sns-1", "Message": json.dumps(message)}
    )


def test_ses_permanent_bounce_uses_the_original_message_id() -> None:
    """mail.headers' Message-ID, not SES's own mail.messageId nor commonHeaders, when present."""
    [f] = _ses(ses_bounce("Permanent"))
    assert (FeedbackKind.HARD_BOUNCE, "ses", "5.1.1") == (f.kind, f.provider, f.status)
    assert ("nobody@example.org", ORIGINAL) == (f.recipient, f.message_id)
    assert "ses:0102018c-feedback-0001" == f.feedback_id
    assert f.diagnostic is not None
    assert "@" not in f.diagnostic


@pytest.mark.parametrize("bounce_type", ["Transient", "Undetermined"])
def test_ses_other_bounces_are_soft(bounce_type: str) -> None:
    [f] = _ses(ses_bounce(bounce_type))
    assert FeedbackKind.SOFT_BOUNCE == f.kind


def test_ses_without_headers_has_no_message_id() -> None:
    """Without included headers only SES's id is known, which is not Herald's."""
    [f] = _ses(ses_bounce(headers=False))
    assert f.message_id is None


def test_ses_common_headers_when_no_header_list() -> None:
    message = ses_bounce()
    del message["mail"]["headers"]
    [f] = _ses(message)
    assert "ignored-when-headers@mail.example.net" == f.message_id


def test_ses_complaint_and_delivery_in_the_event_publishing_form() -> None:
    complaint = {
        "eventType": "Complaint",
        "mail": {"messageId": "ses-id", "commonHeaders": {"messageId": f"<{ORIGINAL}>"}},
        "complaint": {
            "complainedRecipients": [{"emailAddress": "angry@example.com"}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2026-11-19T11:00:00Z",
            "feedbackId": "fb-c",
        },
    }
    [c] = _ses(complaint)
    assert (FeedbackKind.COMPLAINT, "abuse", ORIGINAL) == (c.kind, c.status, c.message_id)
    delivery = {
        "notificationType": "Delivery",
        "mail": {"messageId": "ses-id"},
        "delivery": {"recipients": ["a@example.com", "b@example.com"], "smtpResponse": "250 ok"},
    }
    items = _ses(delivery)
    assert [FeedbackKind.DELIVERED] * 2 == [i.kind for i in items]
    assert ["ses:sns-1#0", "ses:sns-1#1"] == [i.feedback_id for i in items]
    assert [] == _ses({"eventType": "Open", "mail": {}})


def test_sns_signature_versions_1_and_2_verify() -> None:
    """SHA1withRSA and SHA256withRSA over SNS's canonical string, against a certificate made
    here (a self-signed one: the signature check does not depend on who issued it)."""
    key, pem = rsa_certificate()
    for version in ("1", "2"):
        check_sns_signature(sns_envelope(key, ses_bounce(), version=version), pem)


def test_sns_signature_refuses_tampering_and_other_keys() -> None:
    key, pem = rsa_certificate()
    _, other_pem = rsa_certificate()
    envelope = sns_envelope(key, ses_bounce())
    tampered = {**envelope, "Message": envelope["Message"].replace("Permanent", "Transient")}
    with pytest.raises(FeedbackError, match="does not verify") as caught:
        check_sns_signature(tampered, pem)
    assert caught.value.unauthenticated
    with pytest.raises(FeedbackError, match="does not verify"):
        check_sns_signature(envelope, other_pem)
    with pytest.raises(FeedbackError, match="SignatureVersion"):
        check_sns_signature({**envelope, "SignatureVersion": "3"}, pem)


@pytest.mark.parametrize(
    "url",
    [
        "http://sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example/cert.pem",
        "https://evil.example/sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com@evil.example/cert.pem",
        "https://user@sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
        "https://s3.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com/cert.txt",
        None,
    ],
)
def test_sns_certificate_url_pattern_refuses(url: str | None) -> None:
    with pytest.raises(FeedbackError):
        check_sns_url(url)


def test_sns_certificate_url_pattern_accepts_aws_hosts() -> None:
    assert CERT_URL == check_sns_url(CERT_URL)
    cn = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem"
    assert cn == check_sns_url(cn)


async def test_certificates_are_fetched_once_and_only_from_sns_hosts() -> None:
    """The fetch is replaced because AWS's host is not reachable offline; the URL check
    in front of it is the real one."""
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return b"PEM"

    certificates = SnsCertificates(fetch)
    assert b"PEM" == await certificates.pem(CERT_URL)
    assert b"PEM" == await certificates.pem(CERT_URL)
    with pytest.raises(FeedbackError):
        await certificates.pem("https://evil.example/cert.pem")
    assert [CERT_URL] == fetched


# Postmark


def _postmark(**fields: Any) -> bytes:
    event = {
        "RecordType": "Bounce",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Email": "nobody@example.org",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
        "BouncedAt": "2026-11-19T10:15:03Z",
        "Inactive": True,
        "CanActivate": True,
        "Metadata": {"herald-message-id": ORIGINAL},
        **fields,
    }
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({}, FeedbackKind.HARD_BOUNCE),
        ({"Type": "SoftBounce", "TypeCode": 4096}, FeedbackKind.SOFT_BOUNCE),
        ({"Type": "Transient", "TypeCode": 2}, FeedbackKind.SOFT_BOUNCE),
        ({"RecordType": "SpamComplaint", "Type": "SpamComplaint"}, FeedbackKind.COMPLAINT),
        (
            {"RecordType": "Delivery", "Recipient": "nobody@example.org", "Type": None},
            FeedbackKind.DELIVERED,
        ),
    ],
)
def test_postmark_types(fields: dict[str, Any], kind: FeedbackKind) -> None:
    [f] = postmark_feedback(_postmark(**fields))
    assert (kind, "nobody@example.org", ORIGINAL) == (f.kind, f.recipient, f.message_id)


def test_postmark_ignores_auto_responders() -> None:
    assert [] == postmark_feedback(_postmark(Type="AutoResponder", TypeCode=64))


def test_basic_auth() -> None:
    good = "Basic " + base64.b64encode(b"herald:s3cret").decode()
    check_basic_auth(good, "herald", "s3cret")
    for header in (None, "Basic " + base64.b64encode(b"herald:wrong").decode()):
        with pytest.raises(FeedbackError, match="do not match"):
            check_basic_auth(header, "herald", "s3cret")
    with pytest.raises(FeedbackError, match="not configured"):
        check_basic_auth(good, None, None)


# SendGrid


def test_sendgrid_events_map_to_kinds() -> None:
    items = sendgrid_feedback(json.dumps(sendgrid_events()).encode())
    assert [
        (FeedbackKind.HARD_BOUNCE, "nobody@example.org", ORIGINAL),
        (FeedbackKind.SOFT_BOUNCE, "blocked@example.com", None),
        (FeedbackKind.COMPLAINT, "angry@example.com", None),
        (
            FeedbackKind.DELIVERED,
            "happy@example.com",
            "11112222333344445555666677778888@mail.example.net",
        ),
    ] == [(i.kind, i.recipient, i.message_id) for i in items]
    assert "sendgrid:sg-event-bounce-1" == items[0].feedback_id


def test_sendgrid_dropped_reasons() -> None:
    events = [
        {
            "email": "a@example.com",
            "event": "dropped",
            "reason": "Bounced Address",
            "sg_event_id": "1",
        },
        {
            "email": "b@example.com",
            "event": "dropped",
            "reason": "Unsubscribed Address",
            "sg_event_id": "2",
        },
        {"email": "c@example.com", "event": "deferred", "sg_event_id": "3"},
    ]
    items = sendgrid_feedback(json.dumps(events).encode())
    assert [FeedbackKind.HARD_BOUNCE, FeedbackKind.SOFT_BOUNCE] == [i.kind for i in items]


def test_sendgrid_signature() -> None:
    key, public = sendgrid_keys()
    body, ts = json.dumps(sendgrid_events()).encode(), str(int(time.time()))
    signature = sendgrid_sign(key, body, ts)
    check_sendgrid_signature(body, signature, ts, public)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    check_sendgrid_signature(body, signature, ts, pem.decode())
    with pytest.raises(FeedbackError, match="does not verify"):
        check_sendgrid_signature(body + b" ", signature, ts, public)
    with pytest.raises(FeedbackError, match="does not verify"):
        check_sendgrid_signature(body, signature, str(int(ts) + 1), public)
    with pytest.raises(FeedbackError, match="missing"):
        check_sendgrid_signature(body, None, ts, public)
    old = str(int(time.time()) - 3600)
    with pytest.raises(FeedbackError, match="from now"):
        check_sendgrid_signature(body, sendgrid_sign(key, body, old), old, public)


# Mailgun


@pytest.mark.parametrize(
    ("event", "severity", "kind"),
    [
        ("failed", "permanent", FeedbackKind.HARD_BOUNCE),
        ("failed", "temporary", FeedbackKind.SOFT_BOUNCE),
        ("complained", None, FeedbackKind.COMPLAINT),
        ("delivered", None, FeedbackKind.DELIVERED),
    ],
)
def test_mailgun_events(event: str, severity: str | None, kind: FeedbackKind) -> None:
    [f] = mailgun_feedback(mailgun_payload(event, severity))
    assert (kind, ORIGINAL, f"mailgun:mg-{event}-0001") == (f.kind, f.message_id, f.feedback_id)
    assert [] == mailgun_feedback(mailgun_payload("opened", None))


def test_mailgun_signature() -> None:
    payload = mailgun_payload()
    check_mailgun_signature(payload["signature"], MAILGUN_KEY)
    with pytest.raises(FeedbackError, match="does not verify"):
        check_mailgun_signature(payload["signature"], "another-key")
    forged = {**payload["signature"], "token": "another-token"}
    with pytest.raises(FeedbackError, match="does not verify"):
        check_mailgun_signature(forged, MAILGUN_KEY)
    with pytest.raises(FeedbackError, match="no signing key"):
        check_mailgun_signature(payload["signature"], None)


# Hostile bodies


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_any_body_gives_feedback_or_an_error(body: bytes) -> None:
    """Every parser answers any bytes with values or a FeedbackError."""
    for parse in (postmark_feedback, sendgrid_feedback):
        with contextlib.suppress(FeedbackError):
            assert _encodes(parse(body))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
_KEYS = st.sampled_from(
    [
        "event-data",
        "event",
        "severity",
        "recipient",
        "message",
        "headers",
        "Message",
        "notificationType",
        "bounce",
        "bouncedRecipients",
        "emailAddress",
        "RecordType",
        "Type",
        "Email",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _JSON, max_size=6), st.dictionaries(_KEYS, _JSON, max_size=6))
def test_any_json_gives_feedback_or_an_error(outer: dict[str, Any], inner: dict[str, Any]) -> None:
    """JSON of any shape, with the providers' field names, never crashes a parser."""
    outer["event-data"] = inner
    calls: list[Callable[[], list[Feedback]]] = [
        lambda: mailgun_feedback(outer),
        lambda: ses_feedback({"Message": json.dumps(inner), "MessageId": outer.get("Type")}),
        lambda: postmark_feedback(json.dumps(outer).encode()),
        lambda: sendgrid_feedback(json.dumps([outer, inner]).encode()),
    ]
    for call in calls:
        with contextlib.suppress(FeedbackError):
            assert _encodes(call())


def test_topic_arn_constant_is_an_allowed_form() -> None:
    from service.settings.feedback import FeedbackSettings

    assert (TOPIC_ARN,) == FeedbackSettings(ses_topic_arns=(TOPIC_ARN,)).ses_topic_arns


async def test_subscription_is_confirmed_only_on_sns_hosts() -> None:
    """SubscribeURL gets the same host check as the certificate URL before it is fetched."""
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return b""

    certificates = SnsCertificates(fetch)
    good = "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=t"
    await certificates.confirm(good)
    for bad in ("http://sns.eu-west-1.amazonaws.com/?x", "https://evil.example/?x", None):
        with pytest.raises(FeedbackError):
            await certificates.confirm(bad)
    assert [good] == fetched


def test_settings_refuse_a_key_that_is_not_p256() -> None:
    """A SendGrid key that does not load, or an RSA key, stops start-up, not the first POST."""
    from pydantic import ValidationError

    from service.settings.feedback import FeedbackSettings

    _, public = sendgrid_keys()
    assert FeedbackSettings(sendgrid_public_key=public).sendgrid_public_key is not None
    rsa_key, _ = rsa_certificate()
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for bad in ("not base64 at all!", base64.b64encode(b"junk").decode()):
        with pytest.raises(ValidationError, match="not a public key"):
            FeedbackSettings(sendgrid_public_key=bad)
    with pytest.raises(ValidationError, match="not an ECDSA P-256 key"):
        FeedbackSettings(sendgrid_public_key=rsa_pem.decode())
    with pytest.raises(ValidationError, match="SNS topic ARN"):
        FeedbackSettings(ses_topic_arns=("arn:aws:s3:::bucket",))


def test_lone_surrogates_in_json_still_encode() -> None:
    """JSON may escape a lone surrogate (`\\ud800`), which UTF-8 cannot carry: it becomes `?`."""
    body = b'[{"event": "bounce", "email": "a\\ud800b@example.com", "reason": "x\\udfff",'
    body += b' "sg_event_id": "id\\ud800", "smtp-id": "<m\\ud800@x>"}]'
    [f] = sendgrid_feedback(body)
    assert ("a?b@example.com", "m?@x", "sendgrid:id?") == (f.recipient, f.message_id, f.feedback_id)
    CODEC.encode(f.to_record())
