"""Fault-injection harness: Herald as real processes, a switchable SMTP server, a workload, and
the checker, composed into one `Run` per scenario.

    with chaos.run("kill-9") as run:           # topics, SMTP server, workload planned
        run.workload.good(scale.records)
        run.produce()                           # written; the results watcher starts
        run.start("a")                          # `python -m service run`, HERALD_* env
        run.wait_progress(0.3)
        with run.fault("kill -9"):
            run.kill("a"); run.start("a")
        report = run.finish()                   # drained or deadline; stop; judge
    assert not report.violations()

Herald's settings come from the scenario (`HERALD_*`); `CHAOS_HERALD_X=v` in the test's
environment passes `HERALD_X=v` to every instance, for tuning knobs such as retry delays.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.app import Loaded
from service.settings import KafkaSettings, Settings
from tests.chaos import infra
from tests.chaos.checker import OutcomeWatcher, Report, build_report
from tests.chaos.process import HeraldProcess
from tests.chaos.smtp import ChaosSmtp
from tests.chaos.workload import Workload, produce
from tests.conftest import ROOT, SECRETS_ENV

RESULTS = "notification.outcomes"
DEAD_LETTER = "herald.dead-letter"
INPUT_PARTITIONS = 6
HUGE_TOPIC_BYTES = str(16 * 1024 * 1024)


@dataclass(frozen=True)
class Scale:
    name: str
    records: int
    kills: int
    rebalances: int
    fault_s: float
    """Length of one fault window (SMTP down, broker stopped, …)."""
    outage_s: float
    """How long the results topic takes no writes. At full scale longer than Herald's
    transaction timeout plus its 60 s init deadline: the broker, not Herald, decides when the
    transaction caught by it ends."""
    drain_timeout_s: float
    """How long after the last fault every outcome may take to arrive."""
    poison_each: int
    huge: int
    rate: float
    """Records per second of the paced producer, so faults land while records flow."""
    timeout_s: int
    """pytest-timeout for one scenario."""
    leader_moves: int
    """Rounds of partition-leader moves on the three-node cluster."""
    broker_kills: int
    """Nodes of the three-node cluster killed with -9 (and restarted) per run."""
    broker_down_s: float
    """How long a killed node stays down before its restart."""


TUNING = {
    # A member killed with -9 is noticed after this; the broker's minimum.
    "HERALD_KAFKA__SESSION_TIMEOUT_MS": "6000",
    "HERALD_KAFKA__MAX_POLL_INTERVAL_MS": "30000",
    "HERALD_KAFKA__STATISTICS_INTERVAL_MS": "0",
    "HERALD_SMTP__TIMEOUT_S": "3",
    "HERALD_SMTP__BREAKER_COOLDOWN_S": "2",
    # Rounds cover a minute of outage: longer than any fault window below.
    "HERALD_RETRY__DELAYS_S": "[1, 4, 15, 40]",
    "HERALD_PROCESSING__COMMIT_INTERVAL_MS": "200",
    "HERALD_PROCESSING__SHUTDOWN_TIMEOUT_S": "10",
}
"""Herald's knobs, shortened to test time; `CHAOS_HERALD_<GROUP>__<KEY>` overrides any."""

QUICK = Scale("quick", 300, 3, 2, 3.0, 3.0, 60.0, 2, 1, 100.0, 240, 2, 1, 1.5)
FULL = Scale("full", 4000, 8, 3, 20.0, 90.0, 300.0, 25, 2, 150.0, 1500, 6, 3, 15.0)


def capabilities() -> dict[str, bool]:
    """Which delivery-guarantee settings the service under test knows (for the report)."""
    return {
        "idempotency": "idempotency" in Settings.model_fields,
        "kafka.transactional_id": "transactional_id" in KafkaSettings.model_fields,
    }


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "service"], cwd=ROOT, capture_output=True
        ).stdout
        return rev + ("+dirty" if dirty.strip() else "")
    except OSError:
        return "unknown"


class Run:
    """One scenario: its topics, group, SMTP server, workload, instances and judge."""

    def __init__(
        self,
        *,
        scenario: str,
        scale: Scale,
        seed: int,
        loaded: Loaded,
        bootstrap: str,
        workdir: Path,
        templates: Path,
        backend: str = "sqlite",
        redis_url: str | None = None,
        results_replicas: list[list[int]] | None = None,
        results_config: dict[str, str] | None = None,
    ) -> None:
        self.scenario = scenario
        self.scale = scale
        self.seed = seed
        self.loaded = loaded
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.prefix = f"chaos-{uuid.uuid4().hex[:8]}."
        self.group = f"{self.prefix}herald"
        self.results_topic = self.prefix + RESULTS
        self.dead_letter_topic = self.prefix + DEAD_LETTER
        self.smtp = ChaosSmtp(seed)
        self.workload = Workload(loaded, self.prefix, seed)
        self.input_topics = dict.fromkeys(self.workload.topics, INPUT_PARTITIONS)
        self.instances: dict[str, HeraldProcess] = {}
        self.faults: dict[str, Any] = {}
        self.extra: dict[str, Any] = {}
        self.watcher: OutcomeWatcher | None = None
        self.t0 = 0.0
        self.last_fault_end = 0.0
        self._backend = backend
        self._redis_url = redis_url
        self._templates = templates
        self._results_replicas = results_replicas
        self._results_config = results_config or {}
        self._producer: threading.Thread | None = None
        self._producer_error: BaseException | None = None
        self._stop_producing = threading.Event()
        self._bad_exits: list[str] = []
        self.stalled = False
        self.finish_checks: list[Callable[[Report], dict[str, int]]] = []
        """Scenario-specific counts of violations, computed on the report."""

    # -- setup ------------------------------------------------------------------------------------

    def __enter__(self) -> Run:
        # Every topic the routing table binds exists (Herald subscribes to all of them); the
        # workload uses three, with more partitions, so that rebalances move work around.
        table = self.loaded.table
        idle = {self.prefix + table.topic_of(e): 1 for e in table.events}
        topics = {**idle, **self.input_topics, self.results_topic: 3, self.dead_letter_topic: 3}
        big = {"max.message.bytes": HUGE_TOPIC_BYTES}
        configs = {
            **dict.fromkeys(self.input_topics, big),
            self.results_topic: self._results_config,
        }
        replicas = {self.results_topic: self._results_replicas} if self._results_replicas else {}
        infra.create_topics(self.bootstrap, topics, configs, replicas)
        # Now, not only in the report: a run that crashes before its report can be replayed too.
        print(f"\nchaos scenario {self.scenario} [{self.scale.name}, seed {self.seed}] starting")
        self.smtp.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_producing.set()
        if self._producer is not None:
            self._producer.join(60)
        for inst in self.instances.values():
            if inst.alive:
                assert inst.proc is not None
                inst.proc.kill()
                inst.proc.wait(30)
        if self.watcher is not None:
            with contextlib.suppress(Exception):
                self.watcher.stop()
        self.smtp.__exit__()

    def herald_env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        env.update(TUNING)
        env.update(
            {"HERALD_" + k[13:]: v for k, v in os.environ.items() if k.startswith("CHAOS_HERALD_")}
        )
        env.update(
            {
                "HERALD_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
                "HERALD_KAFKA__TOPIC_PREFIX": self.prefix,
                "HERALD_KAFKA__GROUP_ID": self.group,
                "HERALD_KAFKA__CLIENT_ID": f"herald-{name}",
                "HERALD_KAFKA__TRANSACTIONAL_ID": f"{self.prefix}herald-{name}",
                "HERALD_SMTP__HOST": "127.0.0.1",
                "HERALD_SMTP__PORT": str(self.smtp.port),
                "HERALD_SMTP__TLS": "none",
                "HERALD_HTTP__HOST": "127.0.0.1",
                "HERALD_PUBLIC__PORT": "0",
                "HERALD_LOG__FORMAT": "json",
                **SECRETS_ENV,
                "HERALD_ROUTING_FILE": str(ROOT / "deploy" / "routing.yaml"),
                "HERALD_SCHEMAS_DIR": str(ROOT / "schemas"),
                "HERALD_TEMPLATES_DIR": str(self._templates),
                "HERALD_IDEMPOTENCY__BACKEND": self._backend,
                "HERALD_IDEMPOTENCY__PATH": str(self.workdir / f"idempotency-{name}.sqlite3"),
                "HERALD_POLICY__STATE_PATH": str(self.workdir / f"policy-{name}.sqlite3"),
            }
        )
        if self._redis_url:
            env["HERALD_IDEMPOTENCY__REDIS_URL"] = self._redis_url
        return env

    def produce(self, rate: float | None = None) -> None:
        """Write the planned workload (all now, or `rate` per second on a thread meanwhile)
        and watch the results topic."""
        self.watcher = OutcomeWatcher(
            self.bootstrap,
            self.results_topic,
            self.dead_letter_topic,
            self.loaded.store,
            self.workload.records,
        )
        if rate is None:
            produce(self.bootstrap, self.workload.records)
            return
        self._producer = threading.Thread(
            target=self._produce_paced, args=(rate,), name="chaos-producer", daemon=True
        )
        self._producer.start()

    def _produce_paced(self, rate: float) -> None:
        try:
            produce(self.bootstrap, self.workload.records, rate=rate, stop=self._stop_producing)
        except BaseException as exc:  # surfaced by finish(); a thread must not raise
            self._producer_error = exc

    # -- instances --------------------------------------------------------------------------------

    def start(self, name: str = "a", *, ready: bool = True) -> HeraldProcess:
        inst = self.instances.get(name)
        if inst is None:
            inst = HeraldProcess(name, self.herald_env(name), self.workdir / f"herald-{name}.log")
            self.instances[name] = inst
        inst.start()
        if not self.t0:
            self.t0 = time.monotonic()
        if ready:
            inst.wait_ready()
        return inst

    def kill(self, name: str = "a") -> None:
        self.instances[name].kill9()
        self.faults["kill -9"] = self.faults.get("kill -9", 0) + 1

    def stop(self, name: str = "a") -> int:
        """Graceful stop (SIGTERM); an exit code other than 0 is counted against the run."""
        rc = self.instances[name].stop()
        if rc != 0:
            key = "instances that did not stop cleanly (SIGTERM)"
            self.extra[key] = self.extra.get(key, 0) + 1
            self._bad_exits.append(f"{name}={rc}")
        return rc

    def check_alive(self) -> None:
        for inst in self.instances.values():
            inst.check()

    @contextlib.contextmanager
    def fault(self, label: str) -> Iterator[None]:
        """Times a fault window; the drain time is counted from the end of the last one."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.last_fault_end = time.monotonic()
            windows = self.faults.setdefault("windows_s", {})
            windows[label] = round(windows.get(label, 0) + self.last_fault_end - began, 1)

    # -- waiting -----------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return len(self.workload.records)

    def done(self) -> int:
        assert self.watcher is not None, "produce() first"
        return self.watcher.done()

    def wait_progress(self, fraction: float, timeout_s: float | None = None) -> bool:
        """Until that fraction of the records has an outcome; False if the time ran out.

        Once a wait has timed out the run counts as stalled and later waits return at once:
        the scenario goes on to its verdict instead of waiting out every step.
        """
        target = min(self.total, max(1, int(self.total * fraction)))
        deadline = time.monotonic() + (timeout_s or self.scale.drain_timeout_s)
        while self.done() < target:
            self.check_alive()
            if self.stalled or time.monotonic() > deadline:
                self.stalled = True
                self.faults["stalled before"] = f"{fraction:.0%} of the records"
                return False
            time.sleep(0.05)
        return True

    def sleep(self, seconds: float) -> None:
        """Sleep while watching for instances that die on their own."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    # -- judgement ---------------------------------------------------------------------------------

    def finish(self, *, settle_s: float = 1.0) -> Report:
        """Wait for every outcome (or the deadline), stop the instances, judge, record, print."""
        assert self.watcher is not None, "produce() first"
        if self._producer is not None:
            while self._producer.is_alive():
                self.check_alive()
                self._producer.join(0.2)
            if self._producer_error is not None:
                raise self._producer_error
        deadline = max(self.last_fault_end, time.monotonic()) + self.scale.drain_timeout_s
        while self.done() < self.total and time.monotonic() < deadline:
            self.check_alive()
            time.sleep(0.1)
        self.sleep(settle_s)  # late duplicates show up here
        for name in [n for n, inst in self.instances.items() if inst.alive]:
            self.stop(name)
        time.sleep(1.0)  # what the graceful stops committed reaches the watcher
        self.watcher.stop()
        ends = infra.end_offsets(self.bootstrap, self.input_topics)
        committed = infra.positions(self.bootstrap, self.group, self.input_topics)
        uncommitted = sum(end - max(committed.get(tp, 0), 0) for tp, end in ends.items())
        # Not a verdict, a clue: a record whose retry round was not due by the deadline
        # shows as missing, with its input offset committed.
        retry = infra.topics_with_prefix(self.bootstrap, self.prefix + "herald.retry.")
        if retry:
            r_ends = infra.end_offsets(self.bootstrap, retry)
            r_done = infra.positions(self.bootstrap, self.group, retry)
            self.faults["retry-topic records past the committed position"] = sum(
                end - max(r_done.get(tp, 0), 0) for tp, end in r_ends.items()
            )
        last = self.watcher.last_arrival()
        report = build_report(
            scenario=self.scenario,
            scale=self.scale.name,
            seed=self.seed,
            plan=self.workload.records,
            watcher=self.watcher,
            received=self.smtp.received(),
            uncommitted=uncommitted,
            elapsed_s=max(0.0, last - self.t0),
            drain_s=max(0.0, last - (self.last_fault_end or self.t0)),
        )
        report.faults = {**self.faults, "smtp": dict(self.smtp.events)}
        report.faults["starts"] = {n: i.starts for n, i in self.instances.items()}
        report.extra = dict(self.extra)
        if self._bad_exits:
            report.examples["exit codes"] = self._bad_exits
        for check in self.finish_checks:
            report.extra.update(check(report))
        report.commit = git_commit()
        report.capabilities = capabilities()
        report.save()
        print("\n" + report.summary())
        return report

    def logs(self) -> str:
        return "\n".join(inst.tail() for inst in self.instances.values())


def now_ms() -> int:
    return int(time.time() * 1000)


class Outage:
    """A window in which Herald's writes are refused, judged once the run is over.

    `broken()` once the fault holds, `sample()` the group's committed offsets while it does,
    `restored()` when it ends; `check` goes into `Run.finish_checks`. It needs the results topic
    to use `message.timestamp.type=LogAppendTime`: the broker's clock, not the producer's, so an
    outcome produced during the fault and appended after it counts as written after it.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        self.samples: list[tuple[int, dict[tuple[str, int], int]]] = []
        self.broken_ms = 0
        self.restored_ms = 0

    def broken(self, at_ms: int | None = None) -> None:
        """The fault holds from `at_ms` when it was seen to (a probe refused); else from a
        second after now, the time a fault takes to reach the partition leaders."""
        self.broken_ms = at_ms if at_ms is not None else now_ms() + 1000

    def sample(self) -> None:
        committed = infra.positions(self.run.bootstrap, self.run.group, self.run.input_topics)
        self.samples.append((now_ms(), committed))  # read after the commits it saw

    def restored(self) -> None:
        self.restored_ms = now_ms()

    def check(self, _: Report) -> dict[str, int]:
        watcher = self.run.watcher
        assert watcher is not None
        first = {i: min(s.timestamp_ms for s in seen) for i, seen in watcher.by_record.items()}
        early = 0  # committed past a record whose outcome was not written yet
        for at_ms, committed in self.samples:
            for r in self.run.workload.records:
                if 0 <= r.offset < committed.get((r.topic, r.partition), -1):
                    early += first.get(r.index, at_ms + 1) > at_ms
        written = sum(1 for t in first.values() if self.broken_ms <= t < self.restored_ms)
        return {
            "offsets committed past records without a written outcome": early,
            "outcomes written while writes were refused (fault not in effect?)": written,
        }
