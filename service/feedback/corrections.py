"""What a feedback record leads to, as pure functions: the outcome it names, the correction
published for that outcome, and the suppression it creates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from service.feedback.model import Feedback, FeedbackKind, scrub
from service.outcomes.records import Outcome
from service.outcomes.status import Status
from service.settings.feedback import FeedbackSettings
from service.stores.suppressions import Scope, Suppression, address_digest, address_hint

OUTCOME_ID = re.compile(r"[0-9a-f]{32}")
"""An outcome id as Herald makes it (routing.idempotency_key): 32 lowercase hex digits."""
ENHANCED_CODE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
"""An RFC 3463 status code: class, subject, detail."""
MAX_SUPPRESSION_DETAIL = 300

CORRECTIONS: dict[FeedbackKind, tuple[Status, str]] = {
    FeedbackKind.HARD_BOUNCE: (Status.BOUNCED, "hard_bounce"),
    FeedbackKind.SOFT_BOUNCE: (Status.BOUNCED, "soft_bounce"),
    FeedbackKind.COMPLAINT: (Status.COMPLAINED, "complaint"),
    FeedbackKind.DELIVERED: (Status.DELIVERED, "delivered"),
}
"""The status and reason of the correction each kind of feedback publishes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Coordinates:
    """Where a feedback record was read: the correction's source fields."""

    topic: str
    partition: int
    offset: int


def correlate(item: Feedback, domain: str) -> str | None:
    """The outcome id a report names, or None for a mail Herald did not send.

    Herald's Message-ID is `<outcome id>@<domain>` (delivery/mime.py), so a Message-ID whose
    local part is an outcome id and whose domain is `domain` names it. Else a VERP token:
    Herald's VERP envelope sender would be `<verp_prefix>+<outcome id>@<bounce domain>`, so a
    token that is an outcome id names it too (compared without case: some MTAs fold it).
    """
    if item.message_id:
        local, at, right = item.message_id.rpartition("@")
        if at and OUTCOME_ID.fullmatch(local) and right.lower() == domain.lower():
            return local
    token = (item.verp_token or "").lower()
    if OUTCOME_ID.fullmatch(token):
        return token
    return None


def enhanced_code(status: str | None) -> str | None:
    """`status` when it is an RFC 3463 code (5.1.1), else None (a provider's type)."""
    text = (status or "").strip()
    return text if ENHANCED_CODE.fullmatch(text) else None


def correction(
    item: Feedback,
    outcome_id: str,
    *,
    domain: str,
    recipient: str | None,
    source: Coordinates,
    processed_at: datetime,
) -> Outcome:
    """The follow-up outcome of `outcome_id` that `item` reports.

    `recipient` is the label the outcome codec makes of the address (masked or hashed), None
    for a redacted report. `detail` is the diagnostic (addresses already removed), else a
    status that is not an RFC 3463 code (a complaint's `abuse`).
    """
    status, reason = CORRECTIONS[item.kind]
    code = enhanced_code(item.status)
    detail = scrub(item.diagnostic) or (None if code else scrub(item.status))
    return Outcome(
        outcome_id=outcome_id,
        event_id=None,
        event_type=None,
        source_topic=source.topic,
        source_partition=source.partition,
        source_offset=source.offset,
        notification_type=None,
        template=None,
        category=None,
        locale=None,
        recipient=recipient,
        status=status,
        attempt=0,
        smtp_enhanced_code=code,
        message_id=f"<{outcome_id}@{domain}>",
        reason=reason,
        detail=detail,
        processed_at=processed_at,
    )


def suppression(
    item: Feedback,
    *,
    key: bytes,
    settings: FeedbackSettings,
    now: datetime,
    soft_limit_reached: bool = False,
) -> Suppression | None:
    """The suppression `item` creates, or None.

    A hard bounce: every mail (ALL, `hard_bounce`). A complaint: optional mail (OPTIONAL,
    `complaint`). A soft bounce only when it is the `soft_bounce_limit`-th of the address in
    the window (`soft_limit_reached`, counted by the caller): every mail, for
    `soft_bounce_suppress_days` (ALL, `soft_bounces`). A delivery never; nor a report that
    does not name its recipient (a redacted ARF report).
    """
    if not item.recipient:
        return None
    if item.kind is FeedbackKind.HARD_BOUNCE and settings.suppress_hard_bounces:
        scope, reason, expires = Scope.ALL, "hard_bounce", None
    elif item.kind is FeedbackKind.COMPLAINT and settings.suppress_complaints:
        scope, reason, expires = Scope.OPTIONAL, "complaint", None
    elif item.kind is FeedbackKind.SOFT_BOUNCE and soft_limit_reached:
        days = timedelta(days=settings.soft_bounce_suppress_days)
        scope, reason, expires = Scope.ALL, "soft_bounces", now + days
    else:
        return None
    said = " ".join(part for part in (item.status, item.diagnostic) if part)
    return Suppression(
        address_digest=address_digest(item.recipient, key),
        address_hint=address_hint(item.recipient),
        scope=scope,
        reason=reason,
        source=item.provider,
        created_at=now,
        expires_at=expires,
        detail=scrub(said, MAX_SUPPRESSION_DETAIL),
    )


def soft_counter(item: Feedback, key: bytes) -> str:
    """The cap counter soft bounces of `item`'s address are counted in."""
    return f"soft:{address_digest(item.recipient, key)}"
