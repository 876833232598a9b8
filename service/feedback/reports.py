"""Bounce and complaint mail → Feedback: RFC 3464 DSNs, RFC 5965 ARF reports, and the other
bounce formats flufl.bounce recognises. Pure: bytes in, values or a FeedbackError out."""

from __future__ import annotations

import email
import email.policy
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parsedate_to_datetime

from flufl.bounce import all_failures

from service.errors import FeedbackError
from service.feedback.model import (
    Feedback,
    FeedbackKind,
    bare_message_id,
    clip,
    report_digest,
    scrub,
)

MAX_REPORT_BYTES = 5 * 1024 * 1024
"""A larger report is refused unread: a bounce returns headers, or a message Herald sent."""
MAX_RECIPIENTS = 1000
"""Per-recipient blocks read from one DSN; the rest are ignored."""
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus", "other"})
"""RFC 5965 feedback types that are a complaint; `not-spam` (RFC 6430) and `auth-failure`
(RFC 6591) are not about the mail's recipient."""
_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_HEADER_MESSAGE_ID = re.compile(r"^Message-ID:[ \t]*(<[^>\r\n]{1,998}>)", re.IGNORECASE | re.M)
_HEADER_PARTS = ("text/rfc822-headers", "message/global-headers")
_MESSAGE_PARTS = ("message/rfc822", "message/global")


def verp_token(addresses: Iterable[str], prefix: str) -> str | None:
    """The token of the first `<prefix>+<token>@domain` among `addresses` (VERP), else None."""
    pattern = re.compile(rf"^{re.escape(prefix)}\+([A-Za-z0-9._=-]{{1,200}})@", re.IGNORECASE)
    for address in addresses:
        match = pattern.match(address.strip().strip("<>"))
        if match:
            return match.group(1)
    return None


def parse_report(
    raw: bytes,
    *,
    verp_prefix: str = "bounces",
    envelope_to: Sequence[str] = (),
    received_at: datetime | None = None,
    max_bytes: int = MAX_REPORT_BYTES,
) -> list[Feedback]:
    """Every recipient a bounce or complaint reports on; FeedbackError when there is none or
    the message does not read. `envelope_to`: the SMTP RCPT addresses, when the report came
    by SMTP (the VERP token is looked for there first, then in the delivery headers)."""
    if len(raw) > max_bytes:
        raise FeedbackError(f"the report is {len(raw)} bytes, over the {max_bytes} taken")
    when = received_at or datetime.now(UTC)
    try:
        msg = BytesParser(policy=email.policy.default).parsebytes(raw)
        token = verp_token([*envelope_to, *_delivery_addresses(msg)], verp_prefix)
        found = _dsn(msg, raw, token, when) or _arf(msg, raw, token, when, verp_prefix)
        if not found:
            found = _other_bounce(raw, msg, token, when)
    except FeedbackError:
        raise
    except Exception as exc:  # the email package and flufl.bounce on hostile input
        raise FeedbackError(f"the report does not read as mail: {type(exc).__name__}") from exc
    if not found:
        raise FeedbackError("not a bounce or complaint: no DSN, ARF report or known format")
    return found


def _delivery_addresses(msg: Message) -> list[str]:
    """Where the report was delivered, as its delivery headers say (for VERP)."""
    values = [
        str(v)
        for name in ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
        for v in msg.get_all(name, [])
    ]
    return [addr for _, addr in getaddresses(values) if addr]


def _dsn(msg: Message, raw: bytes, token: str | None, when: datetime) -> list[Feedback]:
    """RFC 3464: one Feedback per recipient block of the message/delivery-status part."""
    status_part = _first_part(msg, ("message/delivery-status", "message/global-delivery-status"))
    if status_part is None:
        return []
    blocks = _header_blocks(status_part)
    if not blocks:
        raise FeedbackError("a delivery-status part without any fields")
    per_message, recipients = blocks[0], blocks[1 : 1 + MAX_RECIPIENTS]
    arrival = _date(per_message.get("Arrival-Date"), _date(msg.get("Date"), when))
    message_id = _original_message_id(msg)
    out = []
    for block in recipients:
        recipient = _typed_address(block.get("Original-Recipient")) or _typed_address(
            block.get("Final-Recipient")
        )
        if not recipient:
            continue
        status = _status(block.get("Status"))
        kind = _dsn_kind(str(block.get("Action", "")).strip().lower(), status)
        if kind is None:
            continue
        out.append(
            Feedback(
                feedback_id=report_digest(raw, recipient, kind.value),
                kind=kind,
                recipient=recipient,
                provider="dsn",
                occurred_at=_date(block.get("Last-Attempt-Date"), arrival),
                message_id=message_id,
                verp_token=token,
                status=status,
                diagnostic=scrub(_text(block.get("Diagnostic-Code"))),
            )
        )
    if not out and recipients:
        raise FeedbackError("a DSN none of whose recipient blocks has a recipient and action")
    return out


def _dsn_kind(action: str, status: str | None) -> FeedbackKind | None:
    """Action and RFC 3463 status class → kind; None for `expanded` and unknown actions."""
    if action in ("delivered", "relayed"):
        return FeedbackKind.DELIVERED
    if action == "delayed":
        return FeedbackKind.SOFT_BOUNCE
    if action == "failed":
        return FeedbackKind.SOFT_BOUNCE if status and status[0] == "4" else FeedbackKind.HARD_BOUNCE
    return None


def _arf(
    msg: Message, raw: bytes, token: str | None, when: datetime, prefix: str
) -> list[Feedback]:
    """RFC 5965: a complaint about each Original-Rcpt-To, else about the returned To."""
    part = _first_part(msg, ("message/feedback-report",))
    if part is None:
        return []
    blocks = _header_blocks(part)
    if not blocks:
        raise FeedbackError("a feedback-report part without any fields")
    fields = blocks[0]
    feedback_type = str(fields.get("Feedback-Type", "")).strip().lower()
    if feedback_type not in COMPLAINT_TYPES:
        raise FeedbackError(f"a feedback report of type {feedback_type[:40]!r}: not a complaint")
    message_id = _original_message_id(msg)
    if token is None:
        # The complaint's Original-Mail-From is the envelope sender Herald used: VERP.
        token = verp_token([_typed_address(fields.get("Original-Mail-From")) or ""], prefix)
    recipients = [
        a for v in fields.get_all("Original-Rcpt-To", []) if (a := _typed_address(v))
    ] or _original_recipients(msg)
    if not recipients and (message_id or token):
        # Redacted reports (RFC 6590) omit the address; the Message-ID or VERP still tells.
        recipients = [""]
    if not recipients:
        raise FeedbackError("a complaint that names no recipient, Message-ID or VERP token")
    occurred = _date(fields.get("Arrival-Date") or fields.get("Received-Date"), when)
    return [
        Feedback(
            feedback_id=report_digest(raw, r, FeedbackKind.COMPLAINT.value),
            kind=FeedbackKind.COMPLAINT,
            recipient=r,
            provider="arf",
            occurred_at=occurred,
            message_id=message_id,
            verp_token=token,
            status=feedback_type,
            diagnostic=None,
        )
        for r in recipients[:MAX_RECIPIENTS]
    ]


def _other_bounce(raw: bytes, msg: Message, token: str | None, when: datetime) -> list[Feedback]:
    """flufl.bounce's detectors (Exim, qmail, Postfix's old format, …): addresses only."""
    if msg.get("From") is None:
        # Every bounce has a sender; flufl.bounce's detectors assume one (yale.py indexes it).
        raise FeedbackError("not a bounce or complaint: the message has no From header")
    # flufl.bounce reads the compat32 API (get_payload, get_param) of a plain Message.
    legacy = email.message_from_bytes(raw)
    try:
        temporary, permanent = all_failures(legacy)
    except Exception as exc:  # a detector meeting a shape it does not expect
        raise FeedbackError(f"flufl.bounce failed on the message: {type(exc).__name__}") from exc
    message_id = _original_message_id(msg)
    out = []
    for kind, found in (
        (FeedbackKind.HARD_BOUNCE, permanent),
        (FeedbackKind.SOFT_BOUNCE, temporary),
    ):
        for address in sorted(found)[:MAX_RECIPIENTS]:
            text = address.decode("utf-8", "replace") if isinstance(address, bytes) else address
            recipient = clip(text.strip().strip("<>"), 320)
            if not recipient:
                continue
            out.append(
                Feedback(
                    feedback_id=report_digest(raw, recipient, kind.value),
                    kind=kind,
                    recipient=recipient,
                    provider="bounce",
                    occurred_at=_date(msg.get("Date"), when),
                    message_id=message_id,
                    verp_token=token,
                )
            )
    return out


def _first_part(msg: Message, types: Sequence[str]) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() in types:
            return part
    return None


def _header_blocks(part: Message) -> list[Message]:
    """The header blocks of a delivery-status or feedback-report part. The stdlib splits
    message/delivery-status into its blocks, parses other message/* types as one message, and
    leaves a base64 body as bytes: the latter two are split here."""
    payload = part.get_payload()
    if part.get_content_type() == "message/delivery-status" and isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, list):
        text = "".join(p.as_string() for p in payload if isinstance(p, Message))
    else:
        text = _decoded(part)
    blocks = re.split(r"\r?\n[ \t]*\r?\n", text.strip())
    parser = HeaderParser(policy=email.policy.default)
    return [parser.parsestr(b) for b in blocks if b.strip()]


def _original_message_id(msg: Message) -> str | None:
    """Message-ID of the returned message or headers; else of a header block quoted in the
    text of a bounce (the non-DSN formats return the message inline)."""
    texts = []
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in _MESSAGE_PARTS:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and inner.get("Message-ID"):
                return bare_message_id(str(inner.get("Message-ID")))
        elif ctype in _HEADER_PARTS:
            found = _HEADER_MESSAGE_ID.search(_decoded(part))
            if found:
                return bare_message_id(found.group(1))
        elif ctype == "text/plain":
            texts.append(part)
    for part in texts:
        found = _HEADER_MESSAGE_ID.search(_decoded(part))
        if found:
            return bare_message_id(found.group(1))
    return None


def _original_recipients(msg: Message) -> list[str]:
    """The To of the returned message or headers (an ARF report without Original-Rcpt-To)."""
    for part in msg.walk():
        ctype = part.get_content_type()
        headers: object = None
        if ctype in _MESSAGE_PARTS:
            payload = part.get_payload()
            headers = payload[0] if isinstance(payload, list) and payload else None
        elif ctype in _HEADER_PARTS:
            headers = HeaderParser(policy=email.policy.default).parsestr(_decoded(part))
        if isinstance(headers, Message):
            values = [str(v) for v in headers.get_all("To", [])]
            return [clip(a, 320) or "" for _, a in getaddresses(values) if a][:MAX_RECIPIENTS]
    return []


def _decoded(part: Message) -> str:
    """A leaf part's text, whatever its transfer encoding and charset claim; a charset Python
    does not know is read as UTF-8 with replacements."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, "replace")
    except (LookupError, ValueError):
        return payload.decode("utf-8", "replace")


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _typed_address(value: object) -> str | None:
    """`rfc822; jane@example.com` → `jane@example.com` (RFC 3464 address-type; value)."""
    if value is None:
        return None
    text = str(value)
    kind, sep, address = text.partition(";")
    if not sep:
        address = kind
    elif kind.strip().lower() not in ("rfc822", "utf-8"):
        return None
    return clip(address.strip().strip("<>"), 320)


def _status(value: object) -> str | None:
    match = _STATUS.search(str(value)) if value is not None else None
    return ".".join(match.groups()) if match else None


def _date(value: object, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        parsed = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return default
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
