"""Redrive: dead-lettered records go back to the topic they came from, once their cause is
fixed. The idempotency store makes this safe: a notification already accepted by SMTP ends
DEDUPLICATED instead of being sent again.

Only topics Herald consumes are written to: a dead letter naming any other topic (a forged or
foreign `herald.source.topic` header) is refused and counted. Progress is committed in a
consumer group of its own (`<group_id>-redrive`), so a record is redriven once however often
the command runs; `--from-beginning` starts over.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from service.kafka.records import Outbound, RawRecord
from service.kafka.replay import Publisher, Replay
from service.outcomes import headers
from service.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """Which dead letters to redrive; empty fields select everything."""

    reasons: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, meta: dict[str, str]) -> bool:
        if self.reasons and meta.get("reason") not in self.reasons:
            return False
        try:
            failed_ms = int(meta.get("failed_at_ms", "0"))
        except ValueError:
            failed_ms = 0
        if self.since and failed_ms < self.since.timestamp() * 1000:
            return False
        return not (self.until and failed_ms >= self.until.timestamp() * 1000)


@dataclass(slots=True)
class Report:
    redriven: Counter[str] = field(default_factory=Counter)
    """By reason."""
    skipped: int = 0
    unroutable: int = 0
    """Dead letters without a source topic header (not written by Herald)."""
    refused: int = 0
    """Dead letters naming a source topic Herald does not consume."""


def redrive(
    settings: Settings,
    selection: Selection,
    allowed: frozenset[str],
    *,
    dry_run: bool = False,
    from_beginning: bool = False,
    timeout_s: float = 30.0,
) -> Report:
    """Re-publish the selected dead letters to their source topics among `allowed`, up to the
    end of the dead-letter topic as it is now."""
    k = settings.kafka
    group = f"{k.group_id}-redrive" + (f"-{uuid.uuid4()}" if from_beginning else "")
    replay = Replay(k.librdkafka(), k.topic_prefix + k.dead_letter_topic, group, timeout_s)
    publisher = Publisher(k.librdkafka())
    report = Report()
    try:
        for raw in replay.records():
            target = _target(raw, selection, allowed, report)
            if target is not None and not dry_run:
                publisher.publish(target)
        if not dry_run:
            publisher.flush(timeout_s)  # nothing is committed unless every record is written
            replay.commit()
    finally:
        replay.close()
    return report


def _target(
    raw: RawRecord, selection: Selection, allowed: frozenset[str], report: Report
) -> Outbound | None:
    """The record to write for one dead letter, counted in `report`; None to write nothing."""
    meta = headers.decode(raw.headers)
    if not selection.matches(meta):
        report.skipped += 1
        return None
    topic = meta.get("source.topic")
    if not topic:
        report.unroutable += 1
        return None
    if topic not in allowed:
        report.refused += 1
        return None
    report.redriven[meta.get("reason", "unknown")] += 1
    return Outbound(topic=topic, key=raw.key, value=raw.value, headers=headers.foreign(raw.headers))
