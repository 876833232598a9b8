"""The pure rules of the policy stage: consent and suppression, as functions of what is stored."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from service.routing import Category, Consent
from service.stores.consent import ALL, category_scope, type_scope
from service.stores.suppressions import Scope, Suppression

SUPPRESSION_REASONS = frozenset({"hard_bounce", "complaint", "soft_bounces", "manual"})
"""Reasons outcomes and metrics name; any other a writer of the topic used reads `other`."""


def consent_refusal(
    rule: Consent, category: Category, notification_type: str, choices: Mapping[str, bool]
) -> str | None:
    """Why the user's choices stop this mail (`opted_out`, `no_consent`), or None.

    An opt-out anywhere that covers the mail wins over an opt-in elsewhere: a person who said
    "no more of these" is never mailed because of an older "yes".
    """
    if rule is Consent.NONE:
        return None
    scopes = (ALL, category_scope(category.value), type_scope(notification_type))
    if any(choices.get(s) is False for s in scopes):
        return "opted_out"
    if rule is Consent.REQUIRED and not any(choices.get(s) for s in scopes[1:]):
        return "no_consent"
    return None


def suppression_refusal(
    category: Category, entries: Iterable[Suppression], now: datetime
) -> str | None:
    """`suppressed_<reason>` of the first active suppression that covers this mail, or None.

    Scope ALL covers every mail: the address does not take mail. Scope OPTIONAL covers only
    optional and commercial mail, so a complaint never stops a password reset.
    """
    for s in sorted(entries, key=lambda s: s.scope is not Scope.ALL):
        if not s.active(now):
            continue
        if s.scope is Scope.ALL or category.optional:
            reason = s.reason if s.reason in SUPPRESSION_REASONS else "other"
            return f"suppressed_{reason}"
    return None
