"""Decoding: a topic's record value becomes a typed event, in this one place.

Two wire formats, chosen per event type in the routing table (`framing.py`):
- `confluent`: the writer schema comes from a Confluent-compatible Schema Registry and is
  cached per id;
- `single-object`: the writer schema is looked up by fingerprint in `schemas/`, so no registry
  is needed.
Either way the body is resolved from the writer's schema to the current reader schema, so a
producer still on an older schema keeps working after the schema evolves.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import fastavro

from service.errors import DecodeError, RecordTooLarge
from service.events import budget, framing
from service.events.budget import Limits
from service.events.model import Event, Recipient, TopicBinding
from service.events.registry import RegisteredWriters
from service.events.schemas import SchemaStore, read_body


class EventDecoder:
    """Turns raw records of the bound topics into events."""

    def __init__(
        self,
        bindings: Mapping[str, TopicBinding],
        store: SchemaStore,
        registry: Any | None = None,
        *,
        max_record_bytes: int | None = None,
        limits: Limits | None = None,
        default_locale: str = "en",
    ) -> None:
        """`registry` is a confluent-kafka `AsyncSchemaRegistryClient`, needed for `confluent`;
        `limits` bound what a record may hold; `default_locale` stands in for an unusable one."""
        self._max_bytes = max_record_bytes
        self._limits = limits
        self._default_locale = default_locale
        self._bindings = dict(bindings)
        self._store = store
        self._registry = RegisteredWriters(registry) if registry is not None else None

    @property
    def topics(self) -> list[str]:
        return sorted(self._bindings)

    async def decode(self, topic: str, value: bytes | None) -> Event:
        """The event a record of `topic` carries; DecodeError if it carries none."""
        binding = self._bindings.get(topic)
        if binding is None:
            raise DecodeError(f"no event type is bound to topic {topic!r}")
        if not value:
            raise DecodeError("record has no value (tombstone or empty)")
        if self._max_bytes is not None and len(value) > self._max_bytes:
            raise RecordTooLarge(
                f"record of {len(value):,} bytes is over processing.max_record_bytes "
                f"({self._max_bytes:,}); not decoded"
            )
        if binding.encoding == "confluent":
            schema_id, body = framing.confluent(value)
            if self._registry is None:
                raise DecodeError("confluent-encoded record but no schema registry is configured")
            writer = await self._registry.writer(topic, schema_id)
        else:
            fingerprint, body = framing.single_object(value)
            writer = self._stored_writer(fingerprint)
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
        if self._limits is not None:
            budget.check(record, self._limits)
        return _to_event(record, binding, self._default_locale)

    def _stored_writer(self, fingerprint: bytes) -> Any:
        schema = self._store.by_fingerprint(fingerprint)
        if schema is None:
            raise DecodeError(
                f"unknown schema fingerprint {fingerprint.hex()}: add the writer's schema to "
                f"schemas/history/"
            )
        return schema.parsed


def _to_event(record: Mapping[str, Any], binding: TopicBinding, default_locale: str) -> Event:
    r = record["recipient"]
    occurred = record["occurred_at"]
    if isinstance(occurred, int):  # a writer without the logical type
        occurred = datetime.fromtimestamp(occurred / 1000, UTC)
    locale, zone, notes = budget.audience(
        r.get("locale"), r.get("time_zone"), default_locale, "UTC"
    )
    return Event(
        event_id=record["event_id"],
        event_type=binding.event_type,
        occurred_at=occurred,
        recipient=Recipient(
            user_id=r["user_id"],
            email=r["email"],
            display_name=r.get("display_name"),
            locale=locale,
            time_zone=zone,
            notes=notes,
        ),
        payload=record["payload"],
        schema=binding.reader.name,
    )
