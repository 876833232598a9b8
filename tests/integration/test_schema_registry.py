"""Topics in the Confluent wire format, through a real Schema Registry (Apicurio Registry's
Confluent-compatible API, or `SCHEMA_REGISTRY_URL`): producers use confluent-kafka's own Avro
serializer, Herald decodes on the real broker, and schema evolution is governed by the
registry's compatibility check."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import fastavro.schema
import pytest
from confluent_kafka.schema_registry import AsyncSchemaRegistryClient, Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from service.app import Herald, Loaded, registry_client
from service.settings import Settings
from service.testing import SmtpServer
from tests.conftest import ROOT, body_part, example_record
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for

EVENTS = ["order.confirmed", "user.signed_up", "login.suspicious"]
TOPIC = "user.signed_up"


def _registered_form(schema_name: str) -> dict[str, Any]:
    """The project's schema file with the named types it uses inlined, docs and defaults kept:
    what a producer registers (the parsing canonical form would drop the defaults)."""
    parsed = cast(  # a record's schema: a dict
        dict[str, Any], fastavro.schema.load_schema(str(ROOT / "schemas" / f"{schema_name}.avsc"))
    )
    return {k: v for k, v in parsed.items() if k not in ("__fastavro_parsed", "__named_schemas")}


def _with_payload_field(schema: dict[str, Any], field: dict[str, Any]) -> dict[str, Any]:
    evolved = copy.deepcopy(schema)
    payload = next(f for f in evolved["fields"] if f["name"] == "payload")
    payload["type"]["fields"].append(field)
    return evolved


def _subject(settings: Settings, topic: str) -> str:
    return f"{settings.kafka.topic_prefix}{topic}-value"


def _serializer(client: SchemaRegistryClient, schema: dict[str, Any]) -> AvroSerializer:
    """A producer's serializer for an already registered schema: it looks the id up."""
    return cast(  # mypy types the class Any: its __init__ is assigned from an unannotated method
        AvroSerializer,
        AvroSerializer(client, json.dumps(schema), conf={"auto.register.schemas": False}),
    )


def _encode(
    serializer: AvroSerializer, settings: Settings, topic: str, record: dict[str, Any]
) -> bytes:
    ctx = SerializationContext(settings.kafka.topic_prefix + topic, MessageField.VALUE)
    value = serializer(record, ctx)
    assert value is not None
    return bytes(value)


def _schema_id(value: bytes) -> int:
    """Confluent framing: magic byte 0, then the schema id, 4 bytes big-endian."""
    assert 0 == value[0]
    return int.from_bytes(value[1:5], "big")


def _outcomes(client: SchemaRegistryClient, settings: Settings, messages: list[Any]) -> list[Any]:
    """Outcome records as a downstream consumer reads them: confluent-kafka's deserializer."""
    deserialize = AvroDeserializer(client)
    topic = settings.kafka.topic_prefix + settings.kafka.results_topic
    ctx = SerializationContext(topic, MessageField.VALUE)
    return [deserialize(m.value(), ctx) for m in messages]


@asynccontextmanager
async def herald_on_the_registry(settings: Settings) -> AsyncIterator[Herald]:
    """Herald with the registry client it would make itself, closed afterwards: Herald does
    not close the one it makes, and its open connections would warn when collected."""
    registry = cast(AsyncSchemaRegistryClient, registry_client(settings))  # settings name a URL
    try:
        async with running(settings, registry=registry) as herald:
            yield herald
    finally:
        await registry.aclose()


@pytest.fixture
def client(schema_registry_url: str) -> Iterator[SchemaRegistryClient]:
    """The producers' and consumers' side of the registry, closed after the test."""
    with SchemaRegistryClient({"url": schema_registry_url}) as registry:
        yield registry


@pytest.fixture
def confluent_routing(loaded: Loaded, tmp_path: Path) -> Path:
    """The project's routing table with every event type in the Confluent wire format."""
    table = loaded.table.path.read_text()
    assert "encoding: single-object" in table
    routing = tmp_path / "routing.yaml"
    routing.write_text(table.replace("encoding: single-object", "encoding: confluent"))
    return routing


async def test_confluent_topics_decode_through_a_real_registry(
    make_settings: Any,
    smtp: SmtpServer,
    loaded: Loaded,
    confluent_routing: Path,
    schema_registry_url: str,
    client: SchemaRegistryClient,
) -> None:
    """Every event schema registers under `<topic>-value`; records framed by confluent-kafka's
    serializer are sent, and Herald's outcomes (also Confluent-framed) read back through the
    registry with the schema Herald registered itself."""
    settings = make_settings(
        routing_file=confluent_routing,
        registry={"url": schema_registry_url},
        kafka={"results_encoding": "confluent"},
    )
    create_topics(settings)
    schemas = {t: _registered_form(spec.schema_) for t, spec in loaded.table.events.items()}
    for event_type, schema in schemas.items():
        client.register_schema(_subject(settings, event_type), Schema(json.dumps(schema), "AVRO"))
    records = {}
    batch = []
    for event_type in EVENTS:
        record = example_record(loaded, event_type)
        value = _encode(_serializer(client, schemas[event_type]), settings, event_type, record)
        records[record["event_id"]] = event_type
        batch.append((event_type, record["recipient"]["user_id"].encode(), value))
    produce(settings, batch)

    async with herald_on_the_registry(settings):
        await wait_for(lambda: len(smtp.received) >= 3, what="three mails")
        messages = await read_topic(settings, "notification.outcomes", 3)

    outcomes_subject = _subject(settings, "notification.outcomes")
    registered = client.get_latest_version(outcomes_subject).schema_id
    assert {registered} == {_schema_id(m.value()) for m in messages}
    outcomes = _outcomes(client, settings, messages)
    assert {"SENT"} == {o["status"] for o in outcomes}
    assert records == {o["event_id"]: o["event_type"] for o in outcomes}
    prefix = settings.kafka.topic_prefix
    assert sorted(s for s in client.get_subjects() if s.startswith(prefix)) == sorted(
        [_subject(settings, t) for t in schemas] + [outcomes_subject]
    )


async def test_backward_compatible_evolution_decodes_old_and_new_writers(
    make_settings: Any,
    smtp: SmtpServer,
    loaded: Loaded,
    confluent_routing: Path,
    schema_registry_url: str,
    client: SchemaRegistryClient,
) -> None:
    """Under BACKWARD compatibility a new optional field is version 2 with its own id, and
    Herald (still on version 1's reader) sends a record of each writer."""
    settings = make_settings(
        routing_file=confluent_routing,
        registry={"url": schema_registry_url},
        kafka={"results_encoding": "confluent"},
    )
    create_topics(settings)
    subject = _subject(settings, TOPIC)
    v1 = _registered_form("herald.events.UserSignedUp")
    v2 = _with_payload_field(
        v1, {"name": "referral_code", "type": ["null", "string"], "default": None}
    )
    id1 = client.register_schema(subject, Schema(json.dumps(v1), "AVRO"))
    client.set_compatibility(subject, "BACKWARD")
    assert "BACKWARD" == client.get_compatibility(subject)
    id2 = client.register_schema(subject, Schema(json.dumps(v2), "AVRO"))
    assert id1 != id2
    assert [1, 2] == client.get_versions(subject)
    assert id2 == client.get_version(subject, 2).schema_id

    old = example_record(loaded, TOPIC)
    old["event_id"] = "written-with-v1"
    old["payload"]["activation_url"] = "https://app.example.com/activate?token=v1"
    new = example_record(loaded, TOPIC)
    new["event_id"] = "written-with-v2"
    new["payload"]["referral_code"] = "FRIEND-42"
    new["payload"]["activation_url"] = "https://app.example.com/activate?token=v2"
    old_value = _encode(_serializer(client, v1), settings, TOPIC, old)
    new_value = _encode(_serializer(client, v2), settings, TOPIC, new)
    assert (id1, id2) == (_schema_id(old_value), _schema_id(new_value))
    produce(settings, [(TOPIC, b"k", old_value), (TOPIC, b"k", new_value)])

    async with herald_on_the_registry(settings):
        await wait_for(lambda: len(smtp.received) >= 2, what="both mails")
        messages = await read_topic(settings, "notification.outcomes", 2)

    outcomes = _outcomes(client, settings, messages)
    assert {"written-with-v1": "SENT", "written-with-v2": "SENT"} == {
        o["event_id"]: o["status"] for o in outcomes
    }
    bodies = [body_part(r.message, "plain").get_content() for r in smtp.received]
    assert ["token=v1", "token=v2"] == sorted(
        t for b in bodies for t in ("token=v1", "token=v2") if t in b
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("a new field without a default", {"name": "plan", "type": "string"}),
        ("a field's type changed", {"name": "activation_url", "type": "long"}),
    ],
)
def test_incompatible_change_is_refused_by_the_registry(
    client: SchemaRegistryClient, change: str, field: dict[str, Any]
) -> None:
    """Under BACKWARD compatibility the registry answers 409 and the subject keeps one version."""
    subject = f"it-{uuid.uuid4().hex[:8]}.{TOPIC}-value"
    v1 = _registered_form("herald.events.UserSignedUp")
    client.register_schema(subject, Schema(json.dumps(v1), "AVRO"))
    client.set_compatibility(subject, "BACKWARD")
    incompatible = copy.deepcopy(v1)
    payload = next(f for f in incompatible["fields"] if f["name"] == "payload")
    fields = [f for f in payload["type"]["fields"] if f["name"] != field["name"]]
    payload["type"]["fields"] = [*fields, field]

    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(json.dumps(incompatible), "AVRO"))
    assert 409 == refused.value.http_status_code, change
    assert [1] == client.get_versions(subject)
