"""The statuses an outcome can have; a module of its own, so deciding stages may name them
without knowing how outcomes are written."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What became of a notification (or of a record that never became one)."""

    SENT = "SENT"
    FAILED = "FAILED"
    SUPPRESSED = "SUPPRESSED"
    DEDUPLICATED = "DEDUPLICATED"
    DEAD_LETTERED = "DEAD_LETTERED"
    UNKNOWN = "UNKNOWN"
    BOUNCED = "BOUNCED"
    """A correction: a hard or soft bounce came back after the relay took the mail."""
    COMPLAINED = "COMPLAINED"
    """A correction: the recipient reported the mail as spam or abuse."""
    DELIVERED = "DELIVERED"
    """A correction: the receiving system reported delivery."""

    @property
    def correction(self) -> bool:
        """True for the statuses that follow a terminal outcome, from feedback."""
        return self in _CORRECTIONS


_CORRECTIONS = frozenset({Status.BOUNCED, Status.COMPLAINED, Status.DELIVERED})
