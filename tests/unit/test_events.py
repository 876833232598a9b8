"""Decoding: both wire formats, schema evolution, and bad bytes."""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import Loaded
from service.errors import ConfigError, DecodeError, RecordTooLarge
from service.events.decoder import EventDecoder
from service.events.model import TopicBinding
from service.events.registry import zero_size_items
from service.events.schemas import SchemaStore, _stored, encode_single_object, write_body
from tests.conftest import ROOT, example_record

TOPIC = "user.signed_up"

# UserSignedUp as first published: the recipient had no locale or time zone yet. Readers of
# the current schema fill them from its defaults.
V1 = {
    "type": "record",
    "name": "UserSignedUp",
    "namespace": "herald.events",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "recipient",
            "type": {
                "type": "record",
                "name": "Recipient",
                "fields": [
                    {"name": "user_id", "type": "string"},
                    {"name": "email", "type": "string"},
                    {"name": "display_name", "type": ["null", "string"], "default": None},
                ],
            },
        },
        {
            "name": "payload",
            "type": {
                "type": "record",
                "name": "UserSignedUpPayload",
                "fields": [
                    {"name": "activation_url", "type": "string"},
                    {
                        "name": "activation_expires_at",
                        "type": {"type": "long", "logicalType": "timestamp-millis"},
                    },
                ],
            },
        },
    ],
}
V1_RECORD = {
    "event_id": "e-1",
    "occurred_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "recipient": {"user_id": "u", "email": "old@example.com", "display_name": None},
    "payload": {
        "activation_url": "https://x.example/a",
        "activation_expires_at": datetime(2026, 1, 3, tzinfo=UTC),
    },
}


def _decoder(
    store: SchemaStore,
    encoding: Any = "single-object",
    registry: Any = None,
    max_record_bytes: int | None = None,
) -> EventDecoder:
    reader = store.reader("herald.events.UserSignedUp")
    assert reader is not None
    binding = TopicBinding(topic=TOPIC, event_type=TOPIC, reader=reader, encoding=encoding)
    return EventDecoder({TOPIC: binding}, store, registry, max_record_bytes=max_record_bytes)


def _raw(value: bytes | None, topic: str = TOPIC) -> tuple[str, bytes | None]:
    return topic, value


@pytest.fixture
def evolved_store(tmp_path: Path) -> SchemaStore:
    """The project's schemas plus the v1 writer schema under history/."""
    shutil.copytree(ROOT / "schemas", tmp_path / "schemas")
    history = tmp_path / "schemas" / "history"
    history.mkdir(exist_ok=True)
    (history / "herald.events.UserSignedUp.v1.avsc").write_text(json.dumps(V1))
    return SchemaStore.load(tmp_path / "schemas")


async def test_single_object_round_trip(loaded: Loaded) -> None:
    """A record in the single-object encoding decodes to the typed event it was built from."""
    record = example_record(loaded, TOPIC)
    schema = loaded.store.reader("herald.events.UserSignedUp")
    assert schema is not None
    event = await _decoder(loaded.store).decode(*_raw(encode_single_object(schema, record)))
    assert record["event_id"] == event.event_id
    assert "user.signed_up" == event.event_type
    assert record["occurred_at"] == event.occurred_at
    assert "alex.jordan@example.com" == event.recipient.email
    assert "en-US" == event.recipient.locale
    assert record["payload"]["activation_url"] == event.payload["activation_url"]


async def test_record_over_the_size_limit_is_refused_unread(loaded: Loaded) -> None:
    """The limit is on the bytes: a well-formed record one byte over it is refused, at it not."""
    schema = loaded.store.reader("herald.events.UserSignedUp")
    assert schema is not None
    value = encode_single_object(schema, example_record(loaded, TOPIC))
    at_limit = _decoder(loaded.store, max_record_bytes=len(value))
    assert "user.signed_up" == (await at_limit.decode(*_raw(value))).event_type
    below = _decoder(loaded.store, max_record_bytes=len(value) - 1)
    with pytest.raises(RecordTooLarge, match=f"record of {len(value):,} bytes .*max_record_bytes"):
        await below.decode(*_raw(value))
    assert "record_too_large" == RecordTooLarge.reason


def test_fingerprint_matches_the_avro_spec() -> None:
    """The CRC-64-AVRO of "null" is the value the Avro specification's test vectors give."""
    s = _stored(Path("null"), "null", current=True)
    assert 7195948357588979594 == int.from_bytes(s.fingerprint, "little")


async def test_older_writer_resolves_to_current_reader(evolved_store: SchemaStore) -> None:
    """A producer still on v1 keeps working: missing fields take the reader's defaults."""
    v1 = next(s for s in evolved_store._by_fingerprint.values() if not s.current)
    event = await _decoder(evolved_store).decode(*_raw(encode_single_object(v1, V1_RECORD)))
    assert "en" == event.recipient.locale
    assert "UTC" == event.recipient.time_zone
    assert "old@example.com" == event.recipient.email


async def test_unknown_fingerprint_is_a_decode_error(loaded: Loaded) -> None:
    """A writer schema Herald has never seen is named by its fingerprint, with the fix."""
    stranger = _stored(Path("v1.avsc"), fastavro.parse_schema(V1), current=True)
    with pytest.raises(DecodeError, match=r"unknown schema fingerprint .* schemas/history"):
        await _decoder(loaded.store).decode(*_raw(encode_single_object(stranger, V1_RECORD)))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "no value"),
        (b"", "no value"),
        (b"garbage bytes that are not avro", "not Avro single-object"),
        (b"\xc3\x01\x00", "not Avro single-object"),
    ],
)
async def test_bad_framing_is_a_decode_error(
    loaded: Loaded, value: bytes | None, message: str
) -> None:
    """Tombstones and foreign bytes fail with a reason that says what was expected."""
    with pytest.raises(DecodeError, match=message):
        await _decoder(loaded.store).decode(*_raw(value))


async def test_truncated_and_padded_bodies_are_decode_errors(loaded: Loaded) -> None:
    """A body cut short or followed by junk is corrupt, never half-read."""
    schema = loaded.store.reader("herald.events.UserSignedUp")
    assert schema is not None
    good = encode_single_object(schema, example_record(loaded, TOPIC))
    with pytest.raises(DecodeError, match="corrupt Avro body"):
        await _decoder(loaded.store).decode(*_raw(good[:-5]))
    with pytest.raises(DecodeError, match="trailing bytes"):
        await _decoder(loaded.store).decode(*_raw(good + b"\x00\x01"))


async def test_topic_without_binding_is_a_decode_error(loaded: Loaded) -> None:
    with pytest.raises(DecodeError, match="no event type is bound"):
        await _decoder(loaded.store).decode(*_raw(b"\xc3\x01" + b"\x00" * 8, topic="other"))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
async def test_arbitrary_bytes_only_ever_raise_decode_error(value: bytes) -> None:
    """Whatever arrives, decoding either succeeds or raises DecodeError: nothing else escapes."""
    store = SchemaStore.load(ROOT / "schemas")
    # The ignore: reader() is None for an unknown name, and this one is the project's.
    for prefix in (b"", b"\xc3\x01" + store.reader("herald.events.UserSignedUp").fingerprint):  # type: ignore[union-attr]
        with contextlib.suppress(DecodeError):
            await _decoder(store).decode(*_raw(prefix + value))


async def test_confluent_wire_format_through_a_registry(evolved_store: SchemaStore) -> None:
    """Magic byte + schema id: the writer schema comes from the registry, cached, then resolved.

    The registry is confluent-kafka's in-process mock (`mock://`), as befits a unit test; the
    same path against a real registry is in tests/integration/test_schema_registry.py.
    """
    registry = AsyncSchemaRegistryClient.new_client({"url": "mock://events-test"})
    schema_id = await registry.register_schema(
        "user.signed_up-value", Schema(json.dumps(V1), "AVRO")
    )
    v1 = next(s for s in evolved_store._by_fingerprint.values() if not s.current)
    value = b"\x00" + schema_id.to_bytes(4, "big") + write_body(v1, V1_RECORD)
    decoder = _decoder(evolved_store, "confluent", registry)
    event = await decoder.decode(*_raw(value))
    assert "old@example.com" == event.recipient.email
    assert "en" == event.recipient.locale
    again = await decoder.decode(*_raw(value))
    assert event.event_id == again.event_id


async def test_confluent_unknown_id_and_bad_magic(store: SchemaStore) -> None:
    """An id the registry lacks and a wrong magic byte are decode errors (`mock://` registry)."""
    registry = AsyncSchemaRegistryClient.new_client({"url": "mock://events-test-empty"})
    decoder = _decoder(store, "confluent", registry)
    with pytest.raises(DecodeError, match="not in the registry"):
        await decoder.decode(*_raw(b"\x00\x00\x00\x03\xe7rest"))
    with pytest.raises(DecodeError, match="not Confluent wire format"):
        await decoder.decode(*_raw(b"\xc3\x01abcdefgh"))


def test_broken_schema_file_names_file_and_fix(tmp_path: Path) -> None:
    """A schema that does not parse stops start-up with the file and the fix."""
    broken = {"type": "record", "name": "Broken", "fields": [{"name": "x", "type": "Nope"}]}
    (tmp_path / "herald.events.Broken.avsc").write_text(json.dumps(broken))
    with pytest.raises(ConfigError) as info:
        SchemaStore.load(tmp_path)
    assert "herald.events.Broken.avsc" in str(info.value)
    assert "Fix:" in str(info.value)


async def test_a_schema_id_of_another_subject_is_refused(evolved_store: SchemaStore) -> None:
    """A producer naming a schema registered for some other topic cannot have Herald read
    its bytes with it: only `<topic>-value` counts (`mock://` registry)."""
    registry = AsyncSchemaRegistryClient.new_client({"url": "mock://events-test-subject"})
    foreign_id = await registry.register_schema("elsewhere-value", Schema(json.dumps(V1), "AVRO"))
    v1 = next(s for s in evolved_store._by_fingerprint.values() if not s.current)
    value = b"\x00" + foreign_id.to_bytes(4, "big") + write_body(v1, V1_RECORD)
    with pytest.raises(DecodeError, match=r"not registered under subject user\.signed_up-value"):
        await _decoder(evolved_store, "confluent", registry).decode(*_raw(value))


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"type": "array", "items": "null"}, "the top level"),
        (
            {
                "type": "record",
                "name": "R",
                "fields": [
                    {"name": "ok", "type": {"type": "array", "items": "string"}},
                    {
                        "name": "lines",
                        "type": {
                            "type": "array",
                            "items": {"type": "record", "name": "E", "fields": []},
                        },
                    },
                ],
            },
            ".lines",
        ),
        ({"type": "map", "values": {"type": "fixed", "name": "F", "size": 0}}, "the top level"),
    ],
)
def test_a_writer_with_items_of_no_size_is_found(schema: dict[str, Any], where: str) -> None:
    """Their block count could ask for 2^62 items in a few bytes: unbounded CPU."""
    assert where == zero_size_items(schema)


def test_items_that_take_bytes_pass() -> None:
    assert zero_size_items({"type": "array", "items": ["null", "string"]}) is None
    assert zero_size_items(V1) is None
