"""Outcome records: one per notification on the results topic, in Avro.

Outcomes are Avro (`herald.outcomes.NotificationOutcome`), written in the single-object
encoding, or in the Confluent wire format when the results topic uses a registry.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from service.errors import ConfigError
from service.events import framing
from service.events.schemas import (
    SchemaStore,
    StoredSchema,
    encode_single_object,
    read_body,
    write_body,
)
from service.kafka.records import Outbound, RawRecord
from service.outcomes.status import Status

OUTCOME_SCHEMA = "herald.outcomes.NotificationOutcome"


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
    trace_id: str | None = None
    parent_span_id: str | None = None
    trace_state: str | None = None

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


def hash_address(address: str, key: bytes) -> str:
    """HMAC-SHA-256 of the lower-cased address: stable per key, so readers can count and join
    on it, and not reversed by hashing a list of addresses without the key."""
    return hmac.new(key, address.strip().lower().encode(), hashlib.sha256).hexdigest()


def now() -> datetime:
    return datetime.now(UTC)


class OutcomeCodec:
    """Turns outcomes into records of the results topic."""

    def __init__(
        self,
        *,
        results_topic: str,
        schema: StoredSchema,
        encoding: Literal["single-object", "confluent"] = "single-object",
        registry_schema_id: int | None = None,
        recipient_mode: Literal["masked", "hashed"] = "masked",
        recipient_hash_key: bytes | None = None,
    ) -> None:
        """`recipient_hash_key` keys the recipient's hash; required when it is `hashed`."""
        if recipient_mode == "hashed" and not recipient_hash_key:
            raise ConfigError(
                "environment",
                "HERALD_MAIL__RECIPIENT_HASH_SECRET",
                "hashed recipients need a key",
                "set HERALD_MAIL__RECIPIENT_HASH_SECRET (`openssl rand -hex 32`)",
            )
        self.results_topic = results_topic
        self._schema = schema
        self._encoding = encoding
        self._schema_id = registry_schema_id
        self._recipient_mode = recipient_mode
        self._recipient_key = recipient_hash_key or b""

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
            return hash_address(address, self._recipient_key)
        return mask_address(address)

    def encode(self, outcome: Outcome) -> bytes:
        record = outcome.to_record()
        if self._encoding == "confluent":
            assert self._schema_id is not None
            return framing.confluent_header(self._schema_id) + write_body(self._schema, record)
        return encode_single_object(self._schema, record)

    def outcome(self, outcome: Outcome) -> Outbound:
        key = (outcome.event_id or outcome.outcome_id).encode()
        return Outbound(topic=self.results_topic, key=key, value=self.encode(outcome))


def decode_outcome(value: bytes, store: SchemaStore) -> dict[str, Any]:
    """Read an outcome written in the single-object encoding (for tools and tests)."""
    fingerprint, body = framing.single_object(value)
    writer = store.by_fingerprint(fingerprint)
    reader = store.reader(OUTCOME_SCHEMA)
    if writer is None or reader is None:
        raise ValueError(f"unknown outcome schema fingerprint {fingerprint.hex()}")
    return dict(read_body(body, writer.parsed, reader.parsed))
