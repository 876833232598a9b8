"""The records a scenario sends: good events of the three types, and poison.

Every record is planned with what it must end as (`allowed` statuses) and how many outcomes it
owes (`expected`: one per notification route, or one for a record that never became an event);
producing it fills in its coordinates, which is how outcomes of undecodable records are matched.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import confluent_kafka
from confluent_kafka import KafkaError, Message, TopicPartition

from service.app import Loaded
from service.delivery.mime import message_id
from service.events.schemas import StoredSchema, encode_single_object
from service.routing import idempotency_key
from tests.chaos.infra import client
from tests.conftest import ROOT, example_record

EVENT_TYPES = ("order.confirmed", "user.signed_up", "login.suspicious")
MESSAGE_ID_DOMAIN = "example.com"
"""Herald's default: the domain of `mail.from_address`."""
HUGE_BYTES = 10 * 1024 * 1024
TRAP = "TRAP-"
"""Order numbers starting with this make the trapped template use a variable no event has."""

GOOD = frozenset({"SENT"})
PERMANENT = frozenset({"FAILED"})
POISON = frozenset({"DEAD_LETTERED"})
POISON_KINDS = (
    "garbage",
    "unknown_schema",
    "tombstone",
    "missing_variable",
    "oversized_name",
    "oversized_field",
    "huge_field",
)


@dataclass(slots=True)
class Planned:
    index: int
    kind: str
    """`good`, `perm` (the server answers 550) or one of POISON_KINDS."""
    topic: str
    key: bytes
    value: bytes | None
    event_id: str | None
    """None when the record cannot be decoded into an event."""
    allowed: frozenset[str]
    expected: int
    message_ids: tuple[str, ...] = ()
    """Message-IDs its notifications carry if mailed (deterministic per notification)."""
    partition: int = -1
    offset: int = -1

    @property
    def poison(self) -> bool:
        return self.kind in POISON_KINDS

    @property
    def deliverable(self) -> bool:
        return self.kind == "good"


def trapped_templates(directory: Path) -> Path:
    """A copy of the project's templates where order receipts for `TRAP-…` orders use a
    variable that no event carries: a real missing-template-variable failure, for chosen records.
    """
    shutil.copytree(ROOT / "templates", directory, dirs_exist_ok=True)
    trap = (
        f'{{% if payload.order_number.startswith("{TRAP}") %}}'
        "{{ payload.no_such_variable }}{% endif %}\n"
    )
    for body in directory.glob("*/order_receipt/body.txt"):
        body.write_text(trap + body.read_text(encoding="utf-8"), encoding="utf-8")
    return directory


class Workload:
    """Builds a scenario's records; `produce` writes them and records their coordinates."""

    def __init__(self, loaded: Loaded, prefix: str, seed: int, *, perm_every: int = 20) -> None:
        self._loaded = loaded
        self._prefix = prefix
        self._rng = random.Random(seed)
        self._perm_every = perm_every
        self._run = uuid.UUID(int=self._rng.getrandbits(128)).hex[:8]
        self.records: list[Planned] = []

    def _schema(self, event_type: str) -> StoredSchema:
        schema = self._loaded.store.reader(self._loaded.table.events[event_type].schema_)
        assert schema is not None
        return schema

    def _types(self, event_type: str) -> list[str]:
        return [r.spec.type for r in self._loaded.table.routes[event_type]]

    def _event(
        self, kind: str, event_type: str, user: int, *, allowed: frozenset[str], **changes: object
    ) -> Planned:
        i = len(self.records)
        record = example_record(self._loaded, event_type)
        event_id = f"chaos-{self._run}-{i:06d}"
        local = f"perm-u{user}" if kind == "perm" else f"u{user}"
        email = f"{local}@example.com"
        record["event_id"] = event_id
        # Now, not the example's date: Herald stops retrying events older than retry.max_age_s.
        record["occurred_at"] = datetime.now(UTC)
        record["recipient"].update(
            user_id=f"u{user}",
            email=email,
            locale=("fr-FR", "en-GB", "en-US")[user % 3],
            display_name=f"User {user}" if user % 4 else None,
        )
        for path, value in changes.items():
            target = record
            *parents, leaf = path.split("__")
            for p in parents:
                target = target[p]
            target[leaf] = value
        types = self._types(event_type)
        planned = Planned(
            index=i,
            kind=kind,
            topic=self._prefix + self._loaded.table.topic_of(event_type),
            key=f"u{user}".encode(),
            value=encode_single_object(self._schema(event_type), record),
            event_id=event_id,
            allowed=allowed,
            expected=len(types),
            message_ids=tuple(
                message_id(idempotency_key(event_id, t, email), MESSAGE_ID_DOMAIN) for t in types
            ),
        )
        self.records.append(planned)
        return planned

    def good(self, count: int, *, allowed: frozenset[str] = GOOD) -> None:
        """`count` events over many users; every `perm_every`-th user's mail is refused (550)."""
        users = max(8, count // 3)
        for _ in range(count):
            user = self._rng.randrange(users)
            et = EVENT_TYPES[len(self.records) % len(EVENT_TYPES)]
            perm = self._perm_every and user % self._perm_every == self._perm_every - 1
            if perm:
                self._event("perm", et, user, allowed=PERMANENT)
            else:
                self._event("good", et, user, allowed=allowed)

    def poison(self, kind: str) -> Planned:
        user = self._rng.randrange(1000, 2000)
        if kind == "missing_variable":
            return self._event(
                kind, "order.confirmed", user, allowed=POISON, payload__order_number=f"{TRAP}{user}"
            )
        if kind == "oversized_name":
            # Over processing.max_string_chars: dead-lettered as too_large before any work.
            return self._event(
                kind,
                "user.signed_up",
                user,
                allowed=POISON,
                recipient__display_name="Eve " * 2000,
            )
        if kind == "oversized_field":
            return self._event(
                kind,
                "order.confirmed",
                user,
                allowed=POISON,
                payload__order_number="A-1" * 2000,
            )
        if kind == "huge_field":
            # Well-formed, but ten times processing.max_record_bytes: dead-lettered unread
            # (record_too_large), so it cannot hold up the records behind it.
            return self._event(
                kind,
                "login.suspicious",
                user,
                allowed=POISON,
                payload__device="A" * HUGE_BYTES,
            )
        topic = self._prefix + self._loaded.table.topic_of(self._rng.choice(EVENT_TYPES))
        if kind == "garbage":
            value: bytes | None = b"\x00garbage " + self._rng.randbytes(self._rng.randrange(1, 64))
        elif kind == "unknown_schema":
            value = b"\xc3\x01" + self._rng.randbytes(8) + b"\x02\x04body"
        elif kind == "tombstone":
            value = None
        else:
            raise ValueError(f"unknown poison kind {kind!r}")
        planned = Planned(
            index=len(self.records),
            kind=kind,
            topic=topic,
            key=f"u{user}".encode(),
            value=value,
            event_id=None,
            allowed=POISON,
            expected=1,
        )
        self.records.append(planned)
        return planned

    def shuffle_poison(self) -> None:
        """Spread the poison among the good records (it was appended last)."""
        self._rng.shuffle(self.records)
        for i, r in enumerate(self.records):
            r.index = i

    @property
    def topics(self) -> list[str]:
        return sorted({self._prefix + self._loaded.table.topic_of(e) for e in EVENT_TYPES})


def produce(
    bootstrap: str,
    records: Iterable[Planned],
    *,
    rate: float | None = None,
    stop: threading.Event | None = None,
    timeout_s: float = 300,
) -> None:
    """Write the records in order (`rate` per second, or as fast as possible) and wait until
    every one has its coordinates. A broker that goes away meanwhile is waited for."""
    records = list(records)
    p = confluent_kafka.Producer(
        client(
            bootstrap,
            **{
                "enable.idempotence": True,
                "linger.ms": 20,
                "message.max.bytes": HUGE_BYTES + 2 * 1024 * 1024,
                "message.timeout.ms": int(timeout_s * 1000),
            },
        )
    )
    failures: list[str] = []

    def done(planned: Planned) -> Callable[[KafkaError | None, Message], None]:
        def cb(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                failures.append(f"record {planned.index}: {err}")
                return
            # Either may be None (librdkafka had none): _rewrite_unconfirmed looks for those.
            planned.partition, planned.offset = msg.partition(), msg.offset()  # type: ignore[assignment]

        return cb

    began = time.monotonic()
    for i, r in enumerate(records):
        if stop is not None and stop.is_set():
            break
        if rate:
            time.sleep(max(0.0, began + i / rate - time.monotonic()))
        while True:
            try:
                p.produce(r.topic, r.value, r.key, on_delivery=done(r))
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    left = p.flush(timeout_s)
    assert not failures, f"workload not produced: {failures[:5]}"
    assert left == 0, f"{left} workload records not acknowledged within {timeout_s} s"
    _rewrite_unconfirmed(bootstrap, p, [r for r in records if r.partition >= 0], done, timeout_s)


def _coordinates(m: confluent_kafka.Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed record without an error: it has all three."""
    return cast(str, m.topic()), cast(int, m.partition()), cast(int, m.offset())


def _rewrite_unconfirmed(
    bootstrap: str, p: Any, records: list[Planned], done: Any, timeout_s: float
) -> None:
    """Records acknowledged without an offset, and not found in their partition, are written
    again. Seen on a heavily loaded machine: the idempotent producer reported two records
    delivered (no error, no offset) that never reached the log, and the scenario charged
    Herald with their missing outcomes. One found in the log gets its offset; none is
    written twice."""
    for _ in range(3):
        unknown = {
            (r.topic, r.partition, r.value): r for r in records if r.offset is None or r.offset < 0
        }
        if not unknown:
            return
        c = confluent_kafka.Consumer(
            client(bootstrap, **{"group.id": "chaos-check", "enable.auto.commit": False})
        )
        try:
            parts = {(t, part) for t, part, _ in unknown}
            ends = {tp: c.get_watermark_offsets(TopicPartition(*tp), timeout=15)[1] for tp in parts}
            c.assign([TopicPartition(t, part, 0) for t, part in parts])
            seen: set[tuple[str, int]] = set()
            deadline = time.monotonic() + 30
            while len(seen) < len(parts) and time.monotonic() < deadline:
                for m in c.consume(500, 0.5):
                    if m.error():
                        continue
                    topic, partition, offset = _coordinates(m)
                    found = unknown.get((topic, partition, m.value()))
                    if found is not None:
                        found.offset = offset
                    if offset + 1 >= ends[(topic, partition)]:
                        seen.add((topic, partition))
        finally:
            c.close()
        missing = [r for r in unknown.values() if r.offset is None or r.offset < 0]
        for r in missing:
            p.produce(r.topic, r.value, r.key, on_delivery=done(r))
        p.flush(timeout_s)
