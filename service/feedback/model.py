"""The feedback record: one report about one recipient of one mail, and its Avro codec."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from service.events.schemas import SchemaStore
from service.stores.codec import StateCodec

FEEDBACK_SCHEMA = "herald.feedback.MailFeedback"
MAX_DIAGNOSTIC_CHARS = 500
"""A diagnostic longer than this is cut: it is for people, and a report may be hostile."""
MAX_FIELD_CHARS = 998
"""Any other text taken from a report is cut here (RFC 5322's line limit)."""

_ADDRESS = re.compile(r"<?[^\s<>()\[\],;:\"'@]+@[^\s<>()\[\],;:\"'@]+>?")
"""Anything address-like: a run without spaces or delimiters on either side of an `@`. Wider
than an addr-spec on purpose, so a mangled address in a diagnostic is removed too."""


class FeedbackKind(StrEnum):
    HARD_BOUNCE = "HARD_BOUNCE"
    """The address does not take mail (5.x.x, a permanent failure)."""
    SOFT_BOUNCE = "SOFT_BOUNCE"
    """Not delivered for now (4.x.x, delayed, a full mailbox)."""
    COMPLAINT = "COMPLAINT"
    """The recipient reported the mail as spam or abuse."""
    DELIVERED = "DELIVERED"
    """The receiving system reported delivery."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Feedback:
    """What one report says about one recipient of one mail."""

    feedback_id: str
    """The provider's event id, else a digest of the raw report (plus the recipient), so a
    repeated report is recognised."""
    kind: FeedbackKind
    """Hard or soft bounce, complaint or delivery."""
    recipient: str
    """The address the report is about; consumed by Herald only, never logged in clear."""
    provider: str
    """dsn, arf, bounce (a non-DSN format), ses, postmark, sendgrid, mailgun."""
    occurred_at: datetime
    """When it happened, as the report says, else when it was received."""
    message_id: str | None = None
    """Message-ID of the original mail, without angle brackets, when the report carries it."""
    verp_token: str | None = None
    """The token of a VERP envelope sender (bounces+<token>@domain), when it came back to one."""
    status: str | None = None
    """RFC 3463 status (5.1.1), else the provider's type."""
    diagnostic: str | None = None
    """Diagnostic code or text, addresses removed, at most MAX_DIAGNOSTIC_CHARS."""

    @property
    def key(self) -> bytes:
        """The Kafka key: the Message-ID when known (reports about one mail stay in order),
        else the feedback id."""
        return (self.message_id or self.feedback_id).encode()

    def to_record(self) -> dict[str, Any]:
        return {
            "feedback_id": self.feedback_id,
            "kind": self.kind.value,
            "message_id": self.message_id,
            "verp_token": self.verp_token,
            "recipient": self.recipient,
            "provider": self.provider,
            "status": self.status,
            "diagnostic": self.diagnostic,
            "occurred_at": self.occurred_at,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Feedback:
        when = record["occurred_at"]
        return cls(
            feedback_id=record["feedback_id"],
            kind=FeedbackKind(record["kind"]),
            message_id=record.get("message_id"),
            verp_token=record.get("verp_token"),
            recipient=record["recipient"],
            provider=record["provider"],
            status=record.get("status"),
            diagnostic=record.get("diagnostic"),
            occurred_at=when if when.tzinfo else when.replace(tzinfo=UTC),
        )


def feedback_codec(store: SchemaStore) -> StateCodec:
    return StateCodec(store, FEEDBACK_SCHEMA)


def report_digest(raw: bytes, *parts: str) -> str:
    """SHA-256 of a raw report and the parts that tell its recipients apart, as hex."""
    h = hashlib.sha256(raw)
    for p in parts:
        h.update(b"\x1f" + p.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _utf8(text: str) -> str:
    """`text` with lone surrogates (JSON's `\\ud800`, surrogateescape) as `?`: Avro strings
    are UTF-8, and a record that cannot be encoded must not get as far as the producer."""
    return text.encode("utf-8", "replace").decode("utf-8")


def scrub(text: str | None, limit: int = MAX_DIAGNOSTIC_CHARS) -> str | None:
    """Diagnostic text with every address-like run replaced by `<address>`, whitespace folded,
    and cut to `limit` characters; None for nothing left."""
    if text is None:
        return None
    # Cut before the regex as well, so a hostile megabyte is never scanned whole.
    folded = " ".join(_utf8(text[: limit * 4]).split())
    cleaned = _ADDRESS.sub("<address>", folded)[:limit].strip()
    return cleaned or None


def clip(text: str | None, limit: int = MAX_FIELD_CHARS) -> str | None:
    """Text from a report, stripped and cut to `limit`; None for nothing left."""
    if text is None:
        return None
    out = " ".join(_utf8(str(text)[:limit]).split())
    return out or None


def bare_message_id(value: str | None) -> str | None:
    """A Message-ID without its angle brackets or surrounding space; None if there is none."""
    if not value:
        return None
    text = _utf8(str(value)).strip()
    if text.startswith("<"):
        end = text.find(">")
        text = text[1:end] if end > 0 else text[1:]
    text = text.strip()
    if not text or len(text) > MAX_FIELD_CHARS or any(c.isspace() for c in text):
        return None
    return text


def parse_time(value: Any, default: datetime) -> datetime:
    """An ISO 8601 string or a Unix timestamp in seconds as an aware datetime; `default` for
    anything else."""
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        pass
    return default
