"""Typed events: the envelope every event schema shares, and what a topic is bound to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from service.events.schemas import StoredSchema

Encoding = Literal["single-object", "confluent"]
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
    notes: tuple[str, ...] = ()
    """Defaults put in place of an unusable locale or zone; the outcome says so."""


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


@dataclass(frozen=True, slots=True, kw_only=True)
class TopicBinding:
    """What a topic carries: one event type, its reader schema and wire format."""

    topic: str
    event_type: str
    reader: StoredSchema
    encoding: Encoding


def check_envelope(schema: StoredSchema) -> list[str]:
    """Envelope fields the schema lacks; every event schema must carry all of them."""
    parsed = schema.parsed
    names = {f["name"] for f in parsed.get("fields", [])} if isinstance(parsed, dict) else set()
    return [f for f in ENVELOPE_FIELDS if f not in names]
