"""`herald demo`: the example events published with fresh ids, and their outcomes shown."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import TextIO

import confluent_kafka

from service.app import load
from service.errors import HeraldError
from service.events.schemas import encode_single_object
from service.outcomes.records import decode_outcome
from service.settings import Settings
from service.tools.examples import example_records


def publish_examples(settings: Settings, examples: Path, out: TextIO) -> dict[str, str]:
    """Every example event, with a fresh event id; returns the event types by event id."""
    loaded = load(settings)
    k = settings.kafka
    producer = confluent_kafka.Producer({**k.librdkafka(), "enable.idempotence": True})
    sent: dict[str, str] = {}
    for event_type, record, _ in example_records(examples, loaded.store, loaded.table):
        record["event_id"] = str(uuid.uuid4())
        schema = loaded.store.reader(loaded.table.events[event_type].schema_)
        assert schema is not None
        topic = k.topic_prefix + loaded.table.topic_of(event_type)
        producer.produce(
            topic, encode_single_object(schema, record), key=record["recipient"]["user_id"].encode()
        )
        sent[record["event_id"]] = event_type
        out.write(f"published {event_type:<24} event_id={record['event_id']} -> {topic}\n")
    if producer.flush(30):
        raise HeraldError("demo events were not acknowledged by Kafka within 30 s")
    return sent


def show_outcomes(settings: Settings, sent: dict[str, str], wait_s: float, out: TextIO) -> int:
    """The outcomes of the events `sent`, as they come back within `wait_s`; 1 if some do not."""
    loaded = load(settings)
    k = settings.kafka
    consumer = confluent_kafka.Consumer(
        {
            **k.librdkafka(),
            "group.id": f"herald-demo-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([k.topic_prefix + k.results_topic])
    deadline = time.monotonic() + wait_s
    seen = 0
    try:
        expected = sum(len(loaded.table.routes[t]) for t in sent.values())
        while seen < expected and time.monotonic() < deadline:
            m = consumer.poll(0.5)
            if m is None or m.error():
                continue
            o = decode_outcome(m.value() or b"", loaded.store)
            if o["event_id"] in sent:
                seen += 1
                out.write(
                    f"outcome   {o['event_type']:<24} {o['notification_type']:<30} "
                    f"{o['status']:<11} locale={o['locale']} to={o['recipient']} "
                    f"smtp={o['smtp_code']}\n"
                )
    finally:
        consumer.close()
    if seen < expected:
        out.write(f"only {seen} of {expected} outcomes within {wait_s} s: is `make run` running?\n")
        return 1
    return 0
