"""Provider webhooks → Feedback: SES notifications (inside SNS), Postmark, SendGrid and
Mailgun. Pure: JSON bytes in, values or a FeedbackError out; signatures are `signatures`'s."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from service.errors import FeedbackError
from service.feedback.model import (
    Feedback,
    FeedbackKind,
    bare_message_id,
    clip,
    parse_time,
    report_digest,
    scrub,
)

MAX_BODY_BYTES = 1024 * 1024
"""A webhook body larger than this is refused unread (SendGrid batches stay far below)."""
MAX_EVENTS = 1000
"""Events read from one SendGrid batch; SES recipients read from one notification."""

SES_BOUNCE = {
    "Permanent": FeedbackKind.HARD_BOUNCE,
    "Transient": FeedbackKind.SOFT_BOUNCE,
    "Undetermined": FeedbackKind.SOFT_BOUNCE,
}
POSTMARK_TYPES = {
    "HardBounce": FeedbackKind.HARD_BOUNCE,
    "BadEmailAddress": FeedbackKind.HARD_BOUNCE,
    "SoftBounce": FeedbackKind.SOFT_BOUNCE,
    "Transient": FeedbackKind.SOFT_BOUNCE,
    "DnsError": FeedbackKind.SOFT_BOUNCE,
    "Blocked": FeedbackKind.SOFT_BOUNCE,
    "DMARCPolicy": FeedbackKind.SOFT_BOUNCE,
    "SpamComplaint": FeedbackKind.COMPLAINT,
}
"""Postmark bounce `Type`s that are feedback; the others (AutoResponder, Subscribe,
AddressChange, ChallengeVerification, …) say nothing about the address and are ignored."""
SENDGRID_DROPS = {
    "Bounced Address": FeedbackKind.HARD_BOUNCE,
    "Invalid": FeedbackKind.HARD_BOUNCE,
    "Spam Reporting Address": FeedbackKind.COMPLAINT,
}
"""`dropped` reasons that report on the address; a drop for an unsubscribe or a list is not."""


def load_json(body: bytes) -> Any:
    """The body as JSON; FeedbackError for anything too large or not JSON."""
    if len(body) > MAX_BODY_BYTES:
        raise FeedbackError(f"the body is {len(body)} bytes, over the {MAX_BODY_BYTES} taken")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FeedbackError("the body is not JSON") from exc


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(name)
    return obj


def _s(value: Any, limit: int = 998) -> str | None:
    return clip(value, limit) if isinstance(value, str) else None


def _address(value: Any) -> str | None:
    text = _s(value, 320)
    return text.strip("<>") if text and "@" in text else None


def _id(provider: str, value: Any, index: int, count: int) -> str | None:
    """A provider's event id, with the recipient's index when one event names several."""
    text = _s(str(value) if isinstance(value, int | str) and value != "" else None, 200)
    if text is None:
        return None
    return f"{provider}:{text}" if count == 1 else f"{provider}:{text}#{index}"


def ses_feedback(envelope: dict[str, Any], now: datetime | None = None) -> list[Feedback]:
    """An SES Bounce, Complaint or Delivery notification (SNS `Message`), either the
    notificationType form or the eventType form of configuration-set event publishing."""
    now = now or datetime.now(UTC)
    inner = envelope.get("Message")
    message = load_json(inner.encode()) if isinstance(inner, str) else None
    if not isinstance(message, dict):
        raise FeedbackError("SES: the notification's Message is not a JSON object")
    kind_name = message.get("notificationType") or message.get("eventType")
    mail = message.get("mail")
    message_id = _ses_message_id(mail if isinstance(mail, dict) else {})
    sns_id = envelope.get("MessageId")
    if kind_name == "Bounce":
        bounce = message.get("bounce") or {}
        kind = SES_BOUNCE.get(str(_get(bounce, "bounceType")), FeedbackKind.SOFT_BOUNCE)
        people = _get(bounce, "bouncedRecipients")
        event_id, when = _get(bounce, "feedbackId") or sns_id, _get(bounce, "timestamp")
    elif kind_name == "Complaint":
        complaint = message.get("complaint") or {}
        kind, people = FeedbackKind.COMPLAINT, _get(complaint, "complainedRecipients")
        event_id, when = _get(complaint, "feedbackId") or sns_id, _get(complaint, "timestamp")
    elif kind_name == "Delivery":
        delivery = message.get("delivery") or {}
        kind = FeedbackKind.DELIVERED
        people = [{"emailAddress": r} for r in (_get(delivery, "recipients") or [])]
        event_id, when = sns_id, _get(delivery, "timestamp")
    else:
        return []  # Send, Open, Click, Reject, …: not feedback about the address
    if not isinstance(people, list) or not people:
        raise FeedbackError(f"SES: a {kind_name} notification without recipients")
    people = people[:MAX_EVENTS]
    out = []
    for i, person in enumerate(people):
        recipient = _address(_get(person, "emailAddress"))
        if recipient is None:
            continue
        status = _s(_get(person, "status"), 16)
        if kind_name == "Bounce":
            status = status or _s(_get(message, "bounce", "bounceSubType"), 64)
        elif kind_name == "Complaint":
            status = _s(_get(message, "complaint", "complaintFeedbackType"), 64)
        diagnostic = _get(person, "diagnosticCode") or _get(message, "delivery", "smtpResponse")
        out.append(
            Feedback(
                feedback_id=_id("ses", event_id, i, len(people))
                or report_digest(json.dumps(message, sort_keys=True).encode(), recipient),
                kind=kind,
                recipient=recipient,
                provider="ses",
                occurred_at=parse_time(when, now),
                message_id=message_id,
                status=status,
                diagnostic=scrub(diagnostic if isinstance(diagnostic, str) else None),
            )
        )
    return out


def _ses_message_id(mail: dict[str, Any]) -> str | None:
    """The original Message-ID from the returned headers; `mail.messageId` is SES's own id,
    not Herald's, and is not used."""
    headers = mail.get("headers")
    if isinstance(headers, list):
        for h in headers:
            if isinstance(h, dict) and str(h.get("name", "")).lower() == "message-id":
                return bare_message_id(_s(h.get("value")))
    return bare_message_id(_s(_get(mail, "commonHeaders", "messageId")))


def postmark_feedback(body: bytes, now: datetime | None = None) -> list[Feedback]:
    """A Postmark Bounce, SpamComplaint or Delivery webhook (one record per request)."""
    now = now or datetime.now(UTC)
    event = load_json(body)
    if not isinstance(event, dict):
        raise FeedbackError("Postmark: the body is not a JSON object")
    record_type = event.get("RecordType")
    if record_type == "Delivery":
        kind, recipient = FeedbackKind.DELIVERED, _address(event.get("Recipient"))
        when, status = event.get("DeliveredAt"), _s("Delivery")
    elif record_type in ("Bounce", "SpamComplaint"):
        found = POSTMARK_TYPES.get(str(event.get("Type")))
        if found is None:
            return []
        kind, recipient = found, _address(event.get("Email"))
        when, status = event.get("BouncedAt"), _s(event.get("Type"), 64)
    else:
        return []
    if recipient is None:
        raise FeedbackError(f"Postmark: a {record_type} without a recipient address")
    # Postmark's MessageID is its own; Herald's Message-ID comes back only as metadata the
    # sender attached (X-PM-Metadata-herald-message-id).
    metadata = event.get("Metadata")
    herald_id = metadata.get("herald-message-id") if isinstance(metadata, dict) else None
    event_id = event.get("ID") if record_type != "Delivery" else event.get("MessageID")
    return [
        Feedback(
            feedback_id=_id(f"postmark:{str(record_type).lower()}", event_id, 0, 1)
            or report_digest(body, recipient),
            kind=kind,
            recipient=recipient,
            provider="postmark",
            occurred_at=parse_time(when, now),
            message_id=bare_message_id(_s(herald_id)),
            status=status,
            diagnostic=scrub(_s(event.get("Details")) or _s(event.get("Description"))),
        )
    ]


def sendgrid_feedback(body: bytes, now: datetime | None = None) -> list[Feedback]:
    """A batch of SendGrid events; processed, open, click and the like are skipped."""
    now = now or datetime.now(UTC)
    events = load_json(body)
    if not isinstance(events, list):
        raise FeedbackError("SendGrid: the body is not a JSON array of events")
    out = []
    for event in events[:MAX_EVENTS]:
        if not isinstance(event, dict):
            continue
        kind = _sendgrid_kind(event)
        recipient = _address(event.get("email"))
        if kind is None or recipient is None:
            continue
        out.append(
            Feedback(
                feedback_id=_id("sendgrid", event.get("sg_event_id"), 0, 1)
                or report_digest(json.dumps(event, sort_keys=True).encode(), recipient),
                kind=kind,
                recipient=recipient,
                provider="sendgrid",
                occurred_at=parse_time(event.get("timestamp"), now),
                message_id=bare_message_id(_s(event.get("smtp-id"))),
                status=_s(event.get("status"), 16)
                or _s(event.get("type") or event.get("event"), 64),
                diagnostic=scrub(_s(event.get("reason")) or _s(event.get("response"))),
            )
        )
    return out


def _sendgrid_kind(event: dict[str, Any]) -> FeedbackKind | None:
    name = event.get("event")
    if name == "bounce":
        blocked = event.get("type") == "blocked"
        return FeedbackKind.SOFT_BOUNCE if blocked else FeedbackKind.HARD_BOUNCE
    if name == "dropped":
        return SENDGRID_DROPS.get(str(event.get("reason")))
    simple: dict[str, FeedbackKind] = {
        "deferred": FeedbackKind.SOFT_BOUNCE,
        "delivered": FeedbackKind.DELIVERED,
        "spamreport": FeedbackKind.COMPLAINT,
    }
    return simple.get(str(name))


def mailgun_feedback(payload: dict[str, Any], now: datetime | None = None) -> list[Feedback]:
    """A Mailgun webhook's `event-data`: failed (permanent or temporary), complained,
    delivered; other events are skipped."""
    now = now or datetime.now(UTC)
    data = payload.get("event-data")
    if not isinstance(data, dict):
        raise FeedbackError("Mailgun: the body has no event-data object")
    name, severity = data.get("event"), data.get("severity")
    if name == "failed":
        permanent = severity == "permanent"
        kind = FeedbackKind.HARD_BOUNCE if permanent else FeedbackKind.SOFT_BOUNCE
    elif name == "complained":
        kind = FeedbackKind.COMPLAINT
    elif name == "delivered":
        kind = FeedbackKind.DELIVERED
    else:
        return []
    recipient = _address(data.get("recipient"))
    if recipient is None:
        raise FeedbackError(f"Mailgun: a {name} event without a recipient address")
    status = _get(data, "delivery-status", "enhanced-code") or _get(data, "delivery-status", "code")
    diagnostic = _get(data, "delivery-status", "message") or _get(
        data, "delivery-status", "description"
    )
    return [
        Feedback(
            feedback_id=_id("mailgun", data.get("id"), 0, 1)
            or report_digest(json.dumps(data, sort_keys=True).encode(), recipient),
            kind=kind,
            recipient=recipient,
            provider="mailgun",
            occurred_at=parse_time(data.get("timestamp"), now),
            message_id=bare_message_id(_s(_get(data, "message", "headers", "message-id"))),
            status=_s(str(status), 16) if status not in (None, "") else _s(severity, 16),
            diagnostic=scrub(_s(diagnostic)),
        )
    ]
