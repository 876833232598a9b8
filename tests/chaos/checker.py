"""The judge: what the results topic and the SMTP server say happened, against what was sent.

`OutcomeWatcher` reads the results and dead-letter topics (read_committed, from the beginning)
on a thread for the whole scenario; `build_report` then compares the outcomes and the Message-IDs
the server received with the planned records.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition

from service.events.schemas import SchemaStore
from service.outcomes.records import decode_outcome
from tests.chaos.infra import PROBE_HEADER, client
from tests.chaos.workload import Planned
from tests.conftest import ROOT

RUNS_FILE = ROOT / "var" / "chaos" / "runs.jsonl"
DELIVERED = frozenset({"SENT", "DEDUPLICATED"})
"""Statuses that claim the server took the message."""
NOT_DELIVERED = frozenset({"FAILED", "DEAD_LETTERED", "SUPPRESSED"})
"""Statuses that claim it never got there."""


@dataclass(slots=True)
class Seen:
    outcome: dict[str, Any]
    timestamp_ms: int
    """The outcome record's Kafka timestamp: when Herald produced it, or when the broker appended
    it on a results topic with `message.timestamp.type=LogAppendTime`."""
    arrived: float
    """time.monotonic() when the watcher read it."""


class OutcomeWatcher:
    """Collects every committed outcome and dead letter; matches outcomes to planned records."""

    def __init__(
        self,
        bootstrap: str,
        results: str,
        dead_letter: str,
        store: SchemaStore,
        plan: list[Planned],
    ) -> None:
        self._store = store
        self._plan = plan
        self._by_event = {r.event_id: r.index for r in plan if r.event_id is not None}
        self._by_coord: dict[tuple[str, int, int], int] = {}
        self._results = results
        self._lock = threading.Lock()
        self.by_record: dict[int, list[Seen]] = defaultdict(list)
        self._orphans: list[Seen] = []
        """Outcomes matching no record yet (maybe its delivery report has not come back)."""
        self.undecodable = 0
        self.dead_letters: Counter[tuple[str, int, int]] = Counter()
        self._done_records: set[int] = set()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._consumer = confluent_kafka.Consumer(
            client(
                bootstrap,
                **{
                    "group.id": "chaos-watcher",  # never joins: partitions are assigned
                    "enable.auto.commit": False,
                    "isolation.level": "read_committed",
                    "topic.metadata.refresh.interval.ms": 1000,
                },
            )
        )
        parts = []
        for topic in (results, dead_letter):
            meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
            parts += [
                TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in meta.partitions
            ]
        self._consumer.assign(parts)
        self._thread = threading.Thread(target=self._run, name="chaos-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for m in self._consumer.consume(500, 0.2):
                    if m.error() is None:
                        self._take(m)
        except BaseException as exc:  # surfaced by stop(); a thread must not raise
            self._error = exc
        finally:
            self._consumer.close()

    def _take(self, m: Any) -> None:
        if any(k == PROBE_HEADER for k, _ in m.headers() or ()):
            return  # written by the harness to see whether a fault is in effect
        if m.topic() != self._results:
            headers = dict(m.headers() or [])
            coord = (
                headers.get("herald.source.topic", b"").decode(),
                int(headers.get("herald.source.partition", b"-1")),
                int(headers.get("herald.source.offset", b"-1")),
            )
            with self._lock:
                self.dead_letters[coord] += 1
            return
        try:
            o = decode_outcome(m.value() or b"", self._store)
        except Exception:
            with self._lock:
                self.undecodable += 1
            return
        seen = Seen(o, m.timestamp()[1], time.monotonic())
        with self._lock:
            if not self._match(seen):
                self._orphans.append(seen)

    def _match(self, seen: Seen) -> bool:
        o = seen.outcome
        event_id = o.get("event_id")
        index = self._by_event.get(event_id) if event_id is not None else None
        if index is None:
            coord = (o["source_topic"], o["source_partition"], o["source_offset"])
            if coord not in self._by_coord:  # coordinates arrive with the delivery reports
                self._by_coord = {(r.topic, r.partition, r.offset): r.index for r in self._plan}
            index = self._by_coord.get(coord)
        if index is None:
            return False
        self.by_record[index].append(seen)
        self._done_records.add(index)
        return True

    def _rematch(self) -> None:
        if self._orphans:
            self._orphans = [s for s in self._orphans if not self._match(s)]

    @property
    def unmatched(self) -> list[dict[str, Any]]:
        with self._lock:
            self._rematch()
            return [s.outcome for s in self._orphans]

    def done(self) -> int:
        """How many planned records have at least one outcome."""
        with self._lock:
            self._rematch()
            return len(self._done_records)

    def last_arrival(self) -> float:
        with self._lock:
            return max((s.arrived for ss in self.by_record.values() for s in ss), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error


@dataclass
class Report:
    scenario: str
    scale: str
    seed: int
    records: int
    poison: int
    expected: int
    """Outcomes owed: one per notification, one per record that never became an event."""
    outcomes: int
    by_status: dict[str, int]
    missing: int
    duplicate_outcomes: int
    duplicate_message_ids: int
    lost: int
    """SENT/DEDUPLICATED outcomes whose Message-ID the server never received."""
    unknown: int
    unknown_received: int
    phantom: int
    """Messages the server received although their outcome says FAILED/DEAD_LETTERED, or none."""
    wrong_status: int
    unmatched: int
    dead_letters: int
    duplicate_dead_letters: int
    dead_letter_missing: int
    """Records with a DEAD_LETTERED outcome but no copy on the dead-letter topic."""
    uncommitted: int
    """Input records past the group's committed offsets once the last instance stopped."""
    elapsed_s: float
    drain_s: float
    """From the end of the last fault to the last outcome."""
    faults: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    commit: str = ""
    capabilities: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"chaos scenario {self.scenario} "
            f"[{self.scale}, seed {self.seed}, commit {self.commit}]",
            f"  records {self.records} (poison {self.poison}), outcomes owed {self.expected}, "
            f"seen {self.outcomes}: {self.by_status}",
            f"  missing {self.missing}, duplicate outcomes {self.duplicate_outcomes}, "
            f"duplicate Message-IDs {self.duplicate_message_ids}, lost {self.lost}, "
            f"phantom {self.phantom}, wrong status {self.wrong_status}, unmatched {self.unmatched}",
            f"  unknown {self.unknown} (received {self.unknown_received}), dead letters "
            f"{self.dead_letters} (dup {self.duplicate_dead_letters}), uncommitted "
            f"{self.uncommitted}",
            f"  elapsed {self.elapsed_s:.1f} s, drain after last fault {self.drain_s:.1f} s",
            f"  faults {self.faults}",
        ]
        if self.extra:
            lines.append(f"  checks {self.extra}")
        if self.capabilities:
            lines.append(f"  service settings present: {self.capabilities}")
        for what, items in self.examples.items():
            if items:
                lines.append(f"  e.g. {what}: {items}")
        return "\n".join(lines)

    def violations(self) -> list[str]:
        checks = {
            "records without their outcomes (missing)": self.missing,
            "outcomes published more than once (duplicate outcomes)": self.duplicate_outcomes,
            "Message-IDs the SMTP server received twice": self.duplicate_message_ids,
            "SENT/DEDUPLICATED outcomes never received by SMTP (lost)": self.lost,
            "messages received although their outcome says not delivered (phantom)": self.phantom,
            "outcomes with a status this scenario does not allow": self.wrong_status,
            "outcomes that match no record sent": self.unmatched,
            "dead-lettered records with no dead-letter copy": self.dead_letter_missing,
            "input records left uncommitted at the end": self.uncommitted,
        }
        checks.update({k: v for k, v in self.extra.items() if isinstance(v, int)})
        return [f"{n} {what}" for what, n in checks.items() if n]

    def save(self, path: Path = RUNS_FILE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        row = {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **asdict(self)}
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, default=str) + "\n")


def build_report(
    *,
    scenario: str,
    scale: str,
    seed: int,
    plan: list[Planned],
    watcher: OutcomeWatcher,
    received: Counter[str],
    uncommitted: int,
    elapsed_s: float,
    drain_s: float,
) -> Report:
    by_status: Counter[str] = Counter()
    missing = dup_outcomes = lost = unknown = unknown_received = phantom = wrong = 0
    dl_missing = 0
    examples: dict[str, list[str]] = defaultdict(list)
    accounted: set[str] = set()

    def note(what: str, r: Planned, detail: str = "") -> None:
        if len(examples[what]) < 3:
            examples[what].append(f"#{r.index} {r.kind} {r.event_id or ''} {detail}".strip())

    for r in plan:
        seen = watcher.by_record.get(r.index, [])
        ids = Counter(s.outcome["outcome_id"] for s in seen)
        dup_outcomes += sum(n - 1 for n in ids.values())
        if len(ids) < r.expected:
            missing += r.expected - len(ids)
            mailed = sum(received.get(mid, 0) for mid in r.message_ids)
            note("missing", r, f"{r.topic}[{r.partition}]@{r.offset}, mailed {mailed}x")
        if len(ids) > r.expected:  # two different ids for one notification: also a duplicate
            dup_outcomes += len(ids) - r.expected
            note("duplicate", r, "distinct outcome ids")
        elif any(n > 1 for n in ids.values()):
            note("duplicate", r)
        statuses = {s.outcome["status"] for s in seen}
        if "DEAD_LETTERED" in statuses and not watcher.dead_letters.get(
            (r.topic, r.partition, r.offset)
        ):
            dl_missing += 1
            note("no dead-letter copy", r)
        for s in seen:
            by_status[s.outcome["status"]] += 1
            if s.outcome["status"] not in r.allowed:
                wrong += 1
                note("wrong status", r, f"{s.outcome['status']} {s.outcome.get('reason')}")
        for mid in r.message_ids:
            accounted.add(mid)
            got = received.get(mid, 0)
            if statuses & DELIVERED and not got:
                lost += 1
                note("lost", r)
            if "UNKNOWN" in statuses:
                unknown += 1
                unknown_received += 1 if got else 0
            if got and statuses and statuses <= NOT_DELIVERED:
                phantom += 1
                note("phantom", r, f"{sorted(statuses)}")
    phantom += sum(n for mid, n in received.items() if mid not in accounted)
    dl = watcher.dead_letters
    return Report(
        scenario=scenario,
        scale=scale,
        seed=seed,
        records=len(plan),
        poison=sum(1 for r in plan if r.poison),
        expected=sum(r.expected for r in plan),
        outcomes=sum(len(v) for v in watcher.by_record.values()),
        by_status=dict(sorted(by_status.items())),
        missing=missing,
        duplicate_outcomes=dup_outcomes,
        duplicate_message_ids=sum(n - 1 for n in received.values() if n > 1),
        lost=lost,
        unknown=unknown,
        unknown_received=unknown_received,
        phantom=phantom,
        wrong_status=wrong,
        unmatched=len(watcher.unmatched) + watcher.undecodable,
        dead_letters=sum(dl.values()),
        duplicate_dead_letters=sum(n - 1 for n in dl.values() if n > 1),
        dead_letter_missing=dl_missing,
        uncommitted=uncommitted,
        elapsed_s=round(elapsed_s, 2),
        drain_s=round(drain_s, 2),
        examples=dict(examples),
    )
