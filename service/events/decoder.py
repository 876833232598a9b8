"""Decoding: raw Kafka records become typed events, in this one place.

Two wire formats, chosen per event type in the routing table:
- `confluent`: byte 0, a 4-byte big-endian schema id, the Avro body; the writer schema comes
  from a Confluent-compatible Schema Registry and is cached per id.
- `single-object`: the Avro spec's single-object encoding (C3 01 + CRC-64-AVRO fingerprint);
  the writer schema is looked up in `schemas/`, so no registry is needed.
Either way the body is resolved from the writer's schema to the current reader schema, so a
producer still on an older schema keeps working after the schema evolves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import fastavro

from service.errors import DecodeError, RecordTooLarge, SchemaRegistryUnavailable
from service.events.schemas import SINGLE_OBJECT_MAGIC, SchemaStore, StoredSchema, read_body
from service.kafka.records import RawRecord

Encoding = Literal["single-object", "confluent"]
CONFLUENT_MAGIC = 0
ENVELOPE_FIELDS = ("event_id", "occurred_at", "recipient", "payload")


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """Whom a notification goes to, and how to speak to them."""

    user_id: str
    email: str
    display_name: str | None
    locale: str
    """BCP 47 tag from the event; templates fall back from it."""
    time_zone: str
    """IANA zone for times shown in the mail."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A decoded domain event: the shared envelope typed, the payload as the schema gives it."""

    event_id: str
    event_type: str
    """Routing key, e.g. `order.confirmed`."""
    occurred_at: datetime
    recipient: Recipient
    payload: Mapping[str, Any]
    schema: str
    """Full name of the reader schema the payload was resolved to."""
    source: RawRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicBinding:
    """What a topic carries: one event type, its reader schema and wire format."""

    topic: str
    event_type: str
    reader: StoredSchema
    encoding: Encoding


class EventDecoder:
    """Turns raw records of the bound topics into events."""

    def __init__(
        self,
        bindings: Mapping[str, TopicBinding],
        store: SchemaStore,
        registry: Any | None = None,
        *,
        max_record_bytes: int | None = None,
    ) -> None:
        """`registry` is a confluent-kafka `AsyncSchemaRegistryClient`, needed for `confluent`."""
        self._max_bytes = max_record_bytes
        self._bindings = dict(bindings)
        self._store = store
        self._registry = registry
        self._by_id: dict[int, Any] = {}

    @property
    def topics(self) -> list[str]:
        return sorted(self._bindings)

    async def decode(self, raw: RawRecord) -> Event:
        binding = self._bindings.get(raw.topic)
        if binding is None:
            raise DecodeError(f"no event type is bound to topic {raw.topic!r}")
        value = raw.value
        if not value:
            raise DecodeError("record has no value (tombstone or empty)")
        if self._max_bytes is not None and len(value) > self._max_bytes:
            raise RecordTooLarge(
                f"record of {len(value):,} bytes is over processing.max_record_bytes "
                f"({self._max_bytes:,}); not decoded"
            )
        if binding.encoding == "confluent":
            writer = await self._confluent_writer(value)
            body = value[5:]
        else:
            writer = self._single_object_writer(value)
            body = value[10:]
        try:
            record = read_body(body, writer, binding.reader.parsed)
        except fastavro.read.SchemaResolutionError as exc:
            raise DecodeError(
                f"writer schema cannot be resolved to {binding.reader.name}: {exc}"
            ) from exc
        except Exception as exc:  # fastavro raises many types on corrupt input
            raise DecodeError(
                f"corrupt Avro body for {binding.reader.name}: {type(exc).__name__}: {exc}"
            ) from exc
        return _to_event(record, binding, raw)

    def _single_object_writer(self, value: bytes) -> Any:
        if len(value) < 10 or value[:2] != SINGLE_OBJECT_MAGIC:
            raise DecodeError(
                f"not Avro single-object encoded: starts with {value[:4].hex()!r}, "
                f"expected c301 and an 8-byte fingerprint"
            )
        schema = self._store.by_fingerprint(value[2:10])
        if schema is None:
            raise DecodeError(
                f"unknown schema fingerprint {value[2:10].hex()}: add the writer's schema to "
                f"schemas/history/"
            )
        return schema.parsed

    async def _confluent_writer(self, value: bytes) -> Any:
        if len(value) < 5 or value[0] != CONFLUENT_MAGIC:
            raise DecodeError(
                f"not Confluent wire format: starts with {value[:5].hex()!r}, "
                f"expected magic byte 00 and a 4-byte schema id"
            )
        schema_id = int.from_bytes(value[1:5], "big")
        cached = self._by_id.get(schema_id)
        if cached is not None:
            return cached
        if self._registry is None:
            raise DecodeError("confluent-encoded record but no schema registry is configured")
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            schema = await self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise DecodeError(f"schema id {schema_id} is not in the registry") from exc
            raise SchemaRegistryUnavailable(f"schema registry answered {exc}") from exc
        except Exception as exc:  # httpx transport errors and timeouts
            raise SchemaRegistryUnavailable(
                f"schema registry unreachable: {type(exc).__name__}"
            ) from exc
        try:
            parsed = fastavro.parse_schema(json.loads(schema.schema_str))
        except Exception as exc:
            raise DecodeError(f"schema id {schema_id} is not a valid Avro schema: {exc}") from exc
        self._by_id[schema_id] = parsed
        return parsed


def _to_event(record: Mapping[str, Any], binding: TopicBinding, raw: RawRecord) -> Event:
    r = record["recipient"]
    occurred = record["occurred_at"]
    if isinstance(occurred, int):  # a writer without the logical type
        occurred = datetime.fromtimestamp(occurred / 1000, UTC)
    return Event(
        event_id=record["event_id"],
        event_type=binding.event_type,
        occurred_at=occurred,
        recipient=Recipient(
            user_id=r["user_id"],
            email=r["email"],
            display_name=r.get("display_name"),
            locale=r.get("locale") or "en",
            time_zone=r.get("time_zone") or "UTC",
        ),
        payload=record["payload"],
        schema=binding.reader.name,
        source=raw,
    )


def check_envelope(schema: StoredSchema) -> list[str]:
    """Envelope fields the schema lacks; every event schema must carry all of them."""
    parsed = schema.parsed
    names = {f["name"] for f in parsed.get("fields", [])} if isinstance(parsed, dict) else set()
    return [f for f in ENVELOPE_FIELDS if f not in names]
