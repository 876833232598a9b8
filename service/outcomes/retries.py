"""Retry topics: a transient failure that outlasts the quick in-process tries waits in a topic
per delay (`herald.retry.60s`, `…600s`, …) instead of blocking its partition.

A retry ticket is the original event's bytes with headers naming the one notification to try
again, the round, and the time before which it must not run. Records in one retry topic share a
delay, so they become due in order: the flow pauses such a partition until its head is due.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from service.errors import MalformedTicket
from service.kafka.records import Outbound, RawRecord
from service.outcomes import headers
from service.settings import RetrySettings


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryTicket:
    """What a retry record asks for."""

    notification: str
    """The one notification type of the event to try again."""
    round: int
    """1 for the first retry round; 0 for a notification pace deferred before any retry."""
    not_before_ms: int
    original: RawRecord
    """The event record as first consumed: coordinates for outcomes, bytes for decoding."""


class RetryPolicy:
    """The retry rounds: which topic each goes to, when it is due, and when none is left."""

    def __init__(self, settings: RetrySettings, topic_prefix: str = "") -> None:
        self._s = settings
        self._rounds = [f"{topic_prefix}{settings.topic}.{d}s" for d in settings.delays_s]
        """The topic of each round; rounds with the same delay share one."""
        self.topics = list(dict.fromkeys(self._rounds))

    def is_retry_topic(self, topic: str) -> bool:
        return topic in self.topics

    def rounds_left(self, rounds_done: int, occurred_at: datetime) -> bool:
        """Another round may be scheduled: rounds remain and the event is not too old."""
        if rounds_done >= len(self._rounds):
            return False
        age_s = time.time() - occurred_at.timestamp()
        return age_s <= self._s.max_age_s

    def schedule(
        self, original: RawRecord, *, notification: str, rounds_done: int, reason: str
    ) -> Outbound:
        """The retry record for the next round; `rounds_left` said there is one."""
        return self._ticket(original, notification, rounds_done + 1, rounds_done, reason)

    def defer(
        self,
        original: RawRecord,
        *,
        notification: str,
        rounds_done: int,
        wait_s: float,
        reason: str,
    ) -> Outbound:
        """A record for a notification pace holds back: in the first retry topic whose delay
        covers `wait_s` (the last if none does: it is then asked again, and deferred again),
        due after that topic's delay so the topic stays in order. Uses up no round."""
        index = next(
            (i for i, d in enumerate(self._s.delays_s) if d >= wait_s), len(self._rounds) - 1
        )
        return self._ticket(original, notification, rounds_done, index, reason)

    def _ticket(
        self, original: RawRecord, notification: str, round_: int, index: int, reason: str
    ) -> Outbound:
        """The original's bytes for the retry topic of round `index`, due after its delay."""
        now_ms = int(time.time() * 1000)
        meta = {
            "retry.notification": notification,
            "retry.round": str(round_),
            "retry.not_before_ms": str(now_ms + self._s.delays_s[index] * 1000),
            "retry.reason": reason,
            **headers.source(original),
        }
        return Outbound(
            topic=self._rounds[index],
            key=original.key,
            value=original.value,
            headers=(*headers.foreign(original.headers), *headers.encode(meta)),
        )

    @staticmethod
    def not_before_ms(raw: RawRecord) -> int:
        """When a retry record falls due; 0 (now) if it does not say, so it is read and
        dead-lettered rather than holding its partition."""
        for k, v in raw.headers:
            if k == headers.PREFIX + "retry.not_before_ms":
                try:
                    return int(v)
                except ValueError:
                    return 0
        return 0

    def ticket(self, raw: RawRecord, bound: Collection[str]) -> RetryTicket:
        """Read a retry record; MalformedTicket if its headers are not what `schedule` wrote,
        or name a source topic outside `bound` (the topics Herald consumes)."""
        h = headers.decode(raw.headers)
        if h.get("source.topic") not in bound:
            raise MalformedTicket("retry record for a topic Herald does not consume")
        try:
            original = RawRecord(
                topic=h["source.topic"],
                partition=int(h["source.partition"]),
                offset=int(h["source.offset"]),
                key=raw.key,
                value=raw.value,
                headers=headers.foreign(raw.headers),
                timestamp_ms=raw.timestamp_ms,
            )
            ticket = RetryTicket(
                notification=h["retry.notification"],
                round=int(h["retry.round"]),
                not_before_ms=int(h["retry.not_before_ms"]),
                original=original,
            )
        except (KeyError, ValueError) as exc:
            raise MalformedTicket(f"retry record without a readable {exc} header") from exc
        if not 0 <= ticket.round <= len(self._rounds):  # 0: deferred by pace before any retry
            raise MalformedTicket(f"retry round {ticket.round} is not one of this policy's")
        return ticket
