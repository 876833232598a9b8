"""Kafka failing under Herald: the broker stopped and restarted mid-run, and the results topic
refusing writes for a while.

While outcomes cannot be written, offsets must not move past the records they belong to; once
Kafka is back, everything completes, exactly once.
"""

from __future__ import annotations

import time

import pytest

from tests.chaos import infra
from tests.chaos.conftest import Chaos
from tests.chaos.infra import DedicatedBroker

AFTER_AN_ABORT = frozenset({"SENT", "DEDUPLICATED"})
"""An aborted transaction hands its records back; the store then knows they were accepted."""


def test_broker_stopped_and_restarted(chaos: Chaos, own_broker: DedicatedBroker) -> None:
    scale = chaos.scale
    with chaos.run("broker stopped and restarted", bootstrap=own_broker.bootstrap) as run:
        run.workload.good(scale.records, allowed=AFTER_AN_ABORT)
        run.produce(rate=scale.rate)
        run.start("a")
        run.wait_progress(0.25)
        with run.fault("broker down"):
            own_broker.stop()
            run.sleep(scale.fault_s)
            own_broker.start()
        report = run.finish()
    assert not report.violations(), report.summary()


def _now_ms() -> int:
    return int(time.time() * 1000)


def test_results_topic_refuses_writes(chaos: Chaos) -> None:
    """`max.message.bytes` of the results topic set below any outcome's size, then restored:
    every outcome write fails, as when the topic is unavailable to this producer."""
    scale = chaos.scale
    if scale.name == "quick":
        # Open (docs/reliability.md): with the topic's max.message.bytes below a marker's size
        # the broker cannot complete the abort, and answers CONCURRENT_TRANSACTIONS long past
        # transaction.timeout.ms after the restore; Herald holds the offsets back correctly but
        # does not drain within the window. Kept in `make chaos` until that is solved.
        pytest.skip("known open failure, run by `make chaos`; see docs/reliability.md")
    with chaos.run("results topic refuses writes") as run:
        run.workload.good(scale.records, allowed=AFTER_AN_ABORT)
        run.produce(rate=scale.rate)
        run.start("a")
        run.wait_progress(0.2)
        samples: list[tuple[int, dict[tuple[str, int], int]]] = []
        with run.fault("results topic refuses writes"):
            infra.set_topic_config(run.bootstrap, run.results_topic, "max.message.bytes", "64")
            broken_ms = _now_ms()
            until = time.monotonic() + scale.fault_s
            while time.monotonic() < until:
                run.sleep(0.5)
                committed = infra.positions(run.bootstrap, run.group, run.input_topics)
                samples.append((_now_ms(), committed))  # read after the commits it saw
            pending = run.total - run.done()
            infra.set_topic_config(run.bootstrap, run.results_topic, "max.message.bytes", None)
            restored_ms = _now_ms()
        run.faults["records without outcome when restored"] = pending

        def offsets_held_back(_: object) -> dict[str, int]:
            assert run.watcher is not None
            first = {
                i: min(s.timestamp_ms for s in seen) for i, seen in run.watcher.by_record.items()
            }
            early = 0  # committed past a record whose outcome was not written yet
            for at_ms, committed in samples:
                for r in run.workload.records:
                    if 0 <= r.offset < committed.get((r.topic, r.partition), -1):
                        early += first.get(r.index, at_ms + 1) > at_ms
            written = sum(  # allow a second for the config to reach the partition leaders
                1 for t in first.values() if broken_ms + 1000 <= t < restored_ms
            )
            return {
                "offsets committed past records without a written outcome": early,
                "outcomes written while the topic refused them (fault not in effect?)": written,
            }

        run.finish_checks.append(offsets_held_back)
        report = run.finish()
    assert pending > 0, "the fault window ended with no record left to hold back: too short"
    assert not report.violations(), report.summary()
