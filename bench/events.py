"""Benchmark events: the project's example events, made unique, stamped and produced to Kafka.

Each event gets a fresh event id, its own recipient (user id and address, so keys spread over the
partitions and nothing is deduplicated) and `occurred_at` = the moment it is produced, so
latency = SMTP acceptance time (at the sink) - occurred_at.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import confluent_kafka
import yaml

from service.app import Loaded
from service.delivery.mime import message_id
from service.events.schemas import StoredSchema, encode_single_object
from service.routing import idempotency_key
from service.tools.examples import load_example

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "schemas" / "examples"
TEMPLATES = ROOT / "templates"
OPTIONAL = {"activity", "report", "reminder"}
SECURITY = {"security"}

# Stand-in for bulk optional mail when the project's table routes none yet: an event whose
# template exists, routed as `activity` (optional: List-Unsubscribe, unsubscribe footer).
_BULK_FALLBACKS = [
    ("user.activated", "herald.events.UserActivated", "account_welcome"),
    ("onboarding.step_due", "herald.events.OnboardingStepDue", "onboarding_next_step"),
]


def _template_ok(name: str, default_locale: str = "en") -> bool:
    d = TEMPLATES / default_locale / name
    return all((d / p).is_file() for p in ("subject.txt", "body.html", "body.txt"))


def write_routing(
    dest: Path, source: Path = ROOT / "deploy" / "routing.yaml", *, caps: bool = False
) -> dict[str, Any]:
    """The project's routing table, keeping only events whose example and templates exist,
    plus (if the table has none) one optional bulk route for the priority scenario. `caps`:
    a cap on every optional category, too high to bind, so each such mail pays for it.

    Returns a summary: event types by role.
    """
    table = yaml.safe_load(source.read_text(encoding="utf-8"))
    events: dict[str, Any] = {}
    for event_type, spec in table["events"].items():
        if not (EXAMPLES / f"{event_type}.json").is_file():
            continue
        if all(_template_ok(n["template"]) for n in spec["notifications"]) and not any(
            n.get("when") or n.get("recipient", "recipient") != "recipient"
            for n in spec["notifications"]
        ):
            events[event_type] = spec
    added = None
    if not any(n["category"] in OPTIONAL for s in events.values() for n in s["notifications"]):
        for event_type, schema, template in _BULK_FALLBACKS:
            if (EXAMPLES / f"{event_type}.json").is_file() and _template_ok(template):
                events[event_type] = {
                    "schema": schema,
                    "encoding": "single-object",
                    "notifications": [
                        {
                            "type": f"bench.{template}",
                            "template": template,
                            "category": "activity",
                            "priority": "low",
                        }
                    ],
                }
                added = event_type
                break
    doc: dict[str, Any] = {"version": 1}
    if caps:
        used = {n["category"] for spec in events.values() for n in spec["notifications"]}
        cap = {"cap": {"max": 1_000_000_000, "per": "24h"}}
        doc["categories"] = dict.fromkeys(sorted(used & OPTIONAL), cap)
    doc["events"] = events
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))

    def kind(cats: set[str]) -> list[str]:
        return sorted(
            t for t, s in events.items() if {n["category"] for n in s["notifications"]} <= cats
        )

    optional = kind(OPTIONAL)
    security = kind(SECURITY)
    return {
        "all": list(events),
        "mixed": [t for t in events if t != added],
        "optional": optional,
        "security": security,
        "bench_only_route": added,
    }


@dataclass(frozen=True, slots=True)
class Sent:
    """What the benchmark needs to know about a produced event to time its mail."""

    occurred_ms: int
    event_type: str


class EventFactory:
    """Unique events of the given types, round-robin, as (topic, key, value, message ids)."""

    def __init__(self, loaded: Loaded, prefix: str, types: list[str], domain: str) -> None:
        self._prefix = prefix
        self._domain = domain
        self._protos: list[tuple[str, str, StoredSchema, dict[str, Any], list[str]]] = []
        for t in types:
            spec = loaded.table.events[t]
            schema = loaded.store.reader(spec.schema_)
            assert schema is not None, spec.schema_
            record = load_example(EXAMPLES / f"{t}.json", schema)
            notif = [r.spec.type for r in loaded.table.routes[t]]
            topic = prefix + loaded.table.topic_of(t)
            self._protos.append((t, topic, schema, record, notif))
        self._cycle = itertools.cycle(self._protos)
        self._serial = itertools.count()
        self.sent: dict[str, Sent] = {}
        """Message-ID → what was produced, for every event made so far."""

    @property
    def topics(self) -> list[str]:
        return sorted({p[1] for p in self._protos})

    def make(self, occurred: datetime | None = None) -> tuple[str, bytes, bytes]:
        event_type, topic, schema, proto, notifications = next(self._cycle)
        i = next(self._serial)
        occurred = occurred or datetime.now(UTC)
        occurred = occurred.replace(microsecond=occurred.microsecond // 1000 * 1000)
        r = proto["recipient"]
        local, _, dom = r["email"].partition("@")
        user_id = f"{r['user_id']}-{i}"
        email = f"{local}+b{i}@{dom}"
        record = {
            **proto,
            "event_id": str(uuid.uuid4()),
            "occurred_at": occurred,
            "recipient": {**r, "user_id": user_id, "email": email},
        }
        ms = int(occurred.timestamp() * 1000)
        for n in notifications:
            mid = message_id(idempotency_key(record["event_id"], n, email), self._domain)
            self.sent[mid] = Sent(ms, event_type)
        return topic, user_id.encode(), encode_single_object(schema, record)


def producer(bootstrap: str, linger_ms: int = 5) -> confluent_kafka.Producer:
    return confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": linger_ms,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 1_000_000,
            "batch.num.messages": 10_000,
        }
    )


def _produce(p: confluent_kafka.Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            p.produce(topic, value, key)
            return
        except BufferError:
            p.poll(0.05)


def produce_backlog(bootstrap: str, factory: EventFactory, n: int) -> float:
    """Produce `n` events as fast as possible; returns the seconds it took (acked)."""
    p = producer(bootstrap)
    t0 = time.monotonic()
    for k in range(n):
        _produce(p, *factory.make())
        if k % 1000 == 0:
            p.poll(0)
    if p.flush(120):
        raise RuntimeError("events not acknowledged by Kafka within 120 s")
    return time.monotonic() - t0


def paced(rate: float, duration_s: float, tick_s: float = 0.005) -> Iterator[int]:
    """How many events are due at each tick to keep `rate`/s for `duration_s`."""
    start = time.monotonic()
    done = 0
    total = int(rate * duration_s)
    while done < total:
        now = time.monotonic()
        due = min(total, int((now - start) * rate) + 1)
        if due > done:
            yield due - done
            done = due
        time.sleep(max(0.0, start + done / rate - time.monotonic()) if rate else tick_s)


def produce_paced(
    bootstrap: str,
    factory: EventFactory,
    rate: float,
    duration_s: float,
    stop: Any = None,
) -> int:
    """Produce at a steady `rate`/s (occurred_at = the moment of producing) for `duration_s`,
    or until `stop()` is true; returns how many were produced."""
    p = producer(bootstrap, linger_ms=0)
    # Connected, with a producer id and every topic's leaders known, before the first event:
    # else the first events' latency is this producer's start-up, not Herald's.
    for topic in factory.topics:
        p.list_topics(topic, timeout=10)
    p.flush(10)
    n = 0
    for due in paced(rate, duration_s):
        for _ in range(due):
            _produce(p, *factory.make())
            n += 1
        p.poll(0)
        if stop is not None and stop():
            break
    if p.flush(60):
        raise RuntimeError("paced events not acknowledged by Kafka within 60 s")
    return n
