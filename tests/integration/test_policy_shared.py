"""Two instances in one group share caps and pace through Redis: a recipient's cap and the
relay's burst hold for both together, wherever the partitions land."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Any

import confluent_kafka

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.outcomes.records import decode_outcome
from service.testing import SmtpServer
from tests.conftest import example_record
from tests.integration.conftest import create_topics, read_topic, running, wait_for

ACTIVITY = ("comment.mentioned", "task.assigned", "onboarding.step_due")
"""Event types whose one notification is in the category `activity`, which the test caps."""


def _event(loaded: Loaded, event_type: str, email: str) -> bytes:
    record = example_record(loaded, event_type)
    record["event_id"] = str(uuid.uuid4())
    record["recipient"]["email"] = email
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return encode_single_object(schema, record)


async def test_two_instances_share_a_cap_and_the_relay_burst(
    make_settings: Any, smtp: SmtpServer, loaded: Loaded, redis_url: str, tmp_path: Any
) -> None:
    """A cap of 2 activity mails a day per recipient and a relay of 3 at once, then 1 a minute:
    of 6 activity mails to one address and 6 to six others, one per partition of three activity
    topics (the group puts partitions of them on both instances), 4 are capped and 3 sent in
    all; the other 5 wait in the retry topics. Without sharing, each instance would allow 2 to
    that address and send 3."""
    routing = tmp_path / "routing.yaml"
    table = (loaded.table.path).read_text()
    cap = "version: 1\ncategories:\n  activity: {cap: {max: 2, per: 1d}}\n"
    routing.write_text(table.replace("version: 1\n", cap, 1))
    shared = {
        "routing_file": routing,
        "idempotency": {"backend": "redis", "redis_url": redis_url},
        "policy": {"caps_backend": "redis"},
        "pace": {
            "backend": "redis",
            "relay": {"rate": "1/min", "burst": 3},
            "critical_share": 0.0,
            "hold_s": 0.0,
            "redis_prefix": f"test:{uuid.uuid4().hex[:8]}",
        },
    }
    first, second = make_settings(**shared), make_settings(**shared)
    create_topics(first)
    addresses = ["capped@example.com"] * 6 + [f"other{i}@example.com" for i in range(6)]
    slots = [(t, p) for p in range(3) for t in ACTIVITY]  # 9 partitions, round the 12 mails
    prefix = first.kafka.topic_prefix
    used = {(prefix + t, p) for t, p in slots}
    async with AsyncExitStack() as stack:
        heralds = [await stack.enter_async_context(running(s)) for s in (first, second)]
        await wait_for(
            lambda: all(h.assigned & used for h in heralds), what="activity partitions on both"
        )
        producer = confluent_kafka.Producer({"bootstrap.servers": first.kafka.bootstrap_servers})
        for i, email in enumerate(addresses):
            topic, partition = slots[i % len(slots)]
            value = _event(loaded, topic, email)
            producer.produce(prefix + topic, value, f"k{i}".encode(), partition=partition)
        assert 0 == producer.flush(30)
        outcomes = await read_topic(first, "notification.outcomes", 7, timeout_s=50)
        decided = [
            sum(
                m.value
                for metric in h.metrics.registry.collect()
                if metric.name == "herald_policy_decisions"
                for m in metric.samples
                if m.name.endswith("_total")
            )
            for h in heralds
        ]
    assert all(n > 0 for n in decided), f"both instances judged mail: {decided}"
    results = [decode_outcome(m.value(), loaded.store) for m in outcomes]
    capped = [o for o in results if o["reason"] == "frequency_capped"]
    sent = [o for o in results if o["status"] == "SENT"]
    assert 4 == len(capped)
    assert {"c***@example.com"} == {o["recipient"] for o in capped}
    assert 3 == len(sent), "the relay's burst of 3 holds for both instances together"
    assert 3 == len(smtp.received)
