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
