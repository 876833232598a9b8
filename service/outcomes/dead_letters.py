"""Dead letters: a record's bytes as consumed, with why and whence in `herald.*` headers."""

from __future__ import annotations

import time

from service.kafka.records import Outbound, RawRecord
from service.logs import mask_emails
from service.outcomes import headers

MAX_BYTES = 900_000
"""A dead-letter copy larger than this is cut: Kafka's default record limit is 1 MB, and a copy
the broker refuses would hold the partition back for ever."""


def dead_letter(raw: RawRecord, *, topic: str, reason: str, detail: str, stage: str) -> Outbound:
    """The record's bytes untouched (unless too large), its producer's headers, and Herald's."""
    meta = {
        "reason": reason,
        "detail": mask_emails(detail[:1000]),
        "stage": stage,
        **headers.source(raw),
        "failed_at_ms": str(int(time.time() * 1000)),
    }
    if raw.timestamp_ms is not None:
        meta["source.timestamp_ms"] = str(raw.timestamp_ms)
    value = raw.value
    if value is not None and len(value) > MAX_BYTES:
        meta["truncated_from_bytes"] = str(len(value))
        value = value[:MAX_BYTES]
    return Outbound(
        topic=topic,
        key=raw.key,
        value=value,
        headers=(*headers.foreign(raw.headers), *headers.encode(meta)),
    )
