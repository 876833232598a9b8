"""Retry topics: a transient failure that outlasts the quick in-process retries waits in a
topic per delay (`herald.retry.60s`, `…600s`, …) instead of blocking its partition.

A retry record is the original event's bytes with headers naming the one notification to try
again, the round, and the time before which it must not run. Records in one retry topic share a
delay, so they become due in order: the consumer pauses such a partition until its head is due.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from service.kafka.records import Outbound, RawRecord
from service.outcomes.records import HEADER_PREFIX, foreign_headers
from service.settings import RetrySettings

_H = HEADER_PREFIX + "retry."


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryTicket:
    """What a retry record asks for."""

    notification: str
    """The one notification type of the event to try again."""
    round: int
    """1 for the first retry round."""
    not_before_ms: int
    original: RawRecord
    """The event record as first consumed: coordinates for outcomes, bytes for decoding."""


class RetryPolicy:
    def __init__(self, settings: RetrySettings, topic_prefix: str = "") -> None:
        self._s = settings
        self._rounds = [f"{topic_prefix}{settings.topic}.{d}s" for d in settings.delays_s]
        """The topic of each round; rounds with the same delay share one."""
        self.topics = list(dict.fromkeys(self._rounds))

    def is_retry_topic(self, topic: str) -> bool:
        return topic in self.topics

    def schedule(
        self,
        original: RawRecord,
        *,
        notification: str,
        rounds_done: int,
        occurred_at: datetime,
        reason: str,
    ) -> Outbound | None:
        """The retry record for the next round, or None when rounds or age are used up."""
        if rounds_done >= len(self._rounds):
            return None
        now_ms = int(time.time() * 1000)
        if now_ms - occurred_at.timestamp() * 1000 > self._s.max_age_s * 1000:
            return None
        delay_ms = self._s.delays_s[rounds_done] * 1000
        meta = {
            "notification": notification,
            "round": str(rounds_done + 1),
            "not_before_ms": str(now_ms + delay_ms),
            "reason": reason,
        }
        headers = (
            *foreign_headers(original),
            *((_H + k, v.encode()) for k, v in meta.items()),
            (HEADER_PREFIX + "source.topic", original.topic.encode()),
            (HEADER_PREFIX + "source.partition", str(original.partition).encode()),
            (HEADER_PREFIX + "source.offset", str(original.offset).encode()),
        )
        return Outbound(
            topic=self._rounds[rounds_done], key=original.key, value=original.value, headers=headers
        )

    @staticmethod
    def not_before_ms(raw: RawRecord) -> int:
        for k, v in raw.headers:
            if k == _H + "not_before_ms":
                return int(v)
        return 0

    def ticket(self, raw: RawRecord) -> RetryTicket:
        """Read a retry record; its headers were written by `schedule`."""
        h = {k: v.decode() for k, v in raw.headers if k.startswith(HEADER_PREFIX)}
        original = RawRecord(
            topic=h[HEADER_PREFIX + "source.topic"],
            partition=int(h[HEADER_PREFIX + "source.partition"]),
            offset=int(h[HEADER_PREFIX + "source.offset"]),
            key=raw.key,
            value=raw.value,
            headers=foreign_headers(raw),
            timestamp_ms=raw.timestamp_ms,
        )
        return RetryTicket(
            notification=h[_H + "notification"],
            round=int(h[_H + "round"]),
            not_before_ms=int(h[_H + "not_before_ms"]),
            original=original,
        )
