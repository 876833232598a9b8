"""What the policy stage answers for a notification."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.outcomes.status import Status


class Verdict(StrEnum):
    NOW = "now"
    """Render and send it."""
    NEVER = "never"
    """Do not send it; its outcome has the decision's status and reason."""
    LATER = "later"
    """Not now: pace frees it in `wait_s`; the flow defers it through the retry topics."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """A verdict and why; for NEVER, the status and reason of the outcome."""

    verdict: Verdict
    status: Status | None = None
    reason: str | None = None
    message_id: str | None = None
    """The Message-ID of the mail already accepted, for a duplicate."""
    smtp_code: int | None = None
    """The relay's reply to that mail."""
    wait_s: float = 0.0
    """For LATER: how long until pace frees it."""

    @property
    def go(self) -> bool:
        return self.verdict is Verdict.NOW

    @property
    def deferred(self) -> bool:
        return self.verdict is Verdict.LATER


GO = Decision(verdict=Verdict.NOW)


def later(wait_s: float, limit: str) -> Decision:
    """A notification pace holds back: `limit` frees it in `wait_s`."""
    return Decision(verdict=Verdict.LATER, reason=f"paced_{limit}", wait_s=wait_s)


def never(
    status: Status, reason: str, *, message_id: str | None = None, smtp_code: int | None = None
) -> Decision:
    """A notification that is not to be sent, and the outcome that says so."""
    return Decision(
        verdict=Verdict.NEVER,
        status=status,
        reason=reason,
        message_id=message_id,
        smtp_code=smtp_code,
    )
