"""Reporting: one outcome record per notification on the results topic, and dead letters.

Outcomes are Avro (`herald.outcomes.NotificationOutcome`), written in the single-object
encoding, or in the Confluent wire format when the results topic uses a registry.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from service.errors import ConfigError
from service.events.schemas import SchemaStore, StoredSchema, encode_single_object, write_body
from service.kafka.records import Outbound, RawRecord
from service.logs import mask_emails

OUTCOME_SCHEMA = "herald.outcomes.NotificationOutcome"
HEADER_PREFIX = "herald."


class Status(StrEnum):
    SENT = "SENT"
    FAILED = "FAILED"
    SUPPRESSED = "SUPPRESSED"
    DEDUPLICATED = "DEDUPLICATED"
    DEAD_LETTERED = "DEAD_LETTERED"
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The terminal result of one notification, as published; see the Avro schema's docs."""

    outcome_id: str
    event_id: str | None
    event_type: str | None
    source_topic: str
    source_partition: int
    source_offset: int
    notification_type: str | None
    template: str | None
    category: str | None
    locale: str | None
    recipient: str | None
    status: Status
    attempt: int
    smtp_code: int | None = None
    smtp_enhanced_code: str | None = None
    smtp_text: str | None = None
    message_id: str | None = None
    reason: str | None = None
    detail: str | None = None
    occurred_at: datetime | None = None
    processed_at: datetime
    sent_at: datetime | None = None

    def to_record(self) -> dict[str, Any]:
        """The Avro record: the fields as they are (`asdict` deep-copied every datetime)."""
        record = {name: getattr(self, name) for name in _OUTCOME_FIELDS}
        record["status"] = self.status.value
        return record


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


def record_outcome_id(raw: RawRecord) -> str:
    """Outcome id of a record that never became a notification: its coordinates, hashed."""
    coords = f"{raw.topic}\x1f{raw.partition}\x1f{raw.offset}"
    return hashlib.sha256(coords.encode()).hexdigest()[:32]


def mask_address(address: str) -> str:
    """`jane.doe@example.com` → `j***@example.com`: enough to tell users apart, not to mail them."""
    local, _, domain = address.rpartition("@")
    if not local:
        return "***"
    return f"{local[0]}***@{domain}"


def hash_address(address: str) -> str:
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


DEAD_LETTER_MAX_BYTES = 900_000
"""A dead-letter copy larger than this is cut: Kafka's default record limit is 1 MB, and a copy
the broker refuses would hold the partition back for ever."""


class OutcomeCodec:
    """Turns outcomes, dead letters and retries into the records Herald writes."""

    def __init__(
        self,
        *,
        results_topic: str,
        dead_letter_topic: str,
        schema: StoredSchema,
        encoding: Literal["single-object", "confluent"] = "single-object",
        registry_schema_id: int | None = None,
        recipient_mode: Literal["masked", "hashed"] = "masked",
    ) -> None:
        self.results_topic = results_topic
        self.dead_letter_topic = dead_letter_topic
        self._schema = schema
        self._encoding = encoding
        self._schema_id = registry_schema_id
        self._recipient_mode = recipient_mode

    @staticmethod
    def outcome_schema(store: SchemaStore) -> StoredSchema:
        schema = store.reader(OUTCOME_SCHEMA)
        if schema is None:
            raise ConfigError(
                "schemas/",
                OUTCOME_SCHEMA,
                "the outcome schema is missing",
                f"restore schemas/{OUTCOME_SCHEMA}.avsc",
            )
        return schema

    def recipient_label(self, address: str) -> str:
        if self._recipient_mode == "hashed":
            return hash_address(address)
        return mask_address(address)

    def encode(self, outcome: Outcome) -> bytes:
        record = outcome.to_record()
        if self._encoding == "confluent":
            assert self._schema_id is not None
            header = b"\x00" + self._schema_id.to_bytes(4, "big")
            return header + write_body(self._schema, record)
        return encode_single_object(self._schema, record)

    def outcome(self, outcome: Outcome) -> Outbound:
        key = (outcome.event_id or outcome.outcome_id).encode()
        return Outbound(topic=self.results_topic, key=key, value=self.encode(outcome))

    def dead_letter(self, raw: RawRecord, *, reason: str, detail: str, stage: str) -> Outbound:
        """The record's bytes untouched (unless too large), with why and whence in headers."""
        meta = {
            "reason": reason,
            "detail": mask_emails(detail[:1000]),
            "stage": stage,
            "source.topic": raw.topic,
            "source.partition": str(raw.partition),
            "source.offset": str(raw.offset),
            "failed_at_ms": str(int(time.time() * 1000)),
        }
        if raw.timestamp_ms is not None:
            meta["source.timestamp_ms"] = str(raw.timestamp_ms)
        value = raw.value
        if value is not None and len(value) > DEAD_LETTER_MAX_BYTES:
            meta["truncated_from_bytes"] = str(len(value))
            value = value[:DEAD_LETTER_MAX_BYTES]
        own = tuple((HEADER_PREFIX + k, v.encode()) for k, v in meta.items())
        return Outbound(
            topic=self.dead_letter_topic,
            key=raw.key,
            value=value,
            headers=(*foreign_headers(raw), *own),
        )


def foreign_headers(raw: RawRecord) -> tuple[tuple[str, bytes], ...]:
    """The producer's own headers, without any Herald added on an earlier pass."""
    return tuple((k, v) for k, v in raw.headers if not k.startswith(HEADER_PREFIX))


def decode_outcome(value: bytes, store: SchemaStore) -> dict[str, Any]:
    """Read an outcome written in the single-object encoding (for tools and tests)."""
    from service.events.schemas import SINGLE_OBJECT_MAGIC, read_body

    if value[:2] != SINGLE_OBJECT_MAGIC:
        raise ValueError("not a single-object encoded outcome")
    writer = store.by_fingerprint(value[2:10])
    reader = store.reader(OUTCOME_SCHEMA)
    if writer is None or reader is None:
        raise ValueError(f"unknown outcome schema fingerprint {value[2:10].hex()}")
    return dict(read_body(value[10:], writer.parsed, reader.parsed))
