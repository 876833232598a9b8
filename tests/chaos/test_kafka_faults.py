"""Kafka failing under Herald: the broker stopped and restarted mid-run, and the results topic
unavailable for a while.

While outcomes cannot be written, offsets must not move past the records they belong to; once
Kafka is back, everything completes, exactly once.
"""

from __future__ import annotations

import time

from tests.chaos import infra
from tests.chaos.conftest import Chaos
from tests.chaos.harness import Outage
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


def test_results_topic_unavailable(chaos: Chaos, own_broker: DedicatedBroker) -> None:
    """The results topic's partitions below `min.insync.replicas` for a while, then back:
    the broker answers NOT_ENOUGH_REPLICAS to every outcome write, as when the topic has lost
    its replicas, and keeps retrying the transaction markers until they can be written."""
    scale = chaos.scale
    # Replicas on [1, 2] with broker 2 stopped: one replica in sync, so min.insync.replicas=2
    # makes the topic refuse acks=all writes with a retriable error. The fault used to be
    # max.message.bytes=64, which also refuses the coordinator's abort marker; Kafka 4.1 treats
    # that as fatal for the marker and never completes the transaction (docs/reliability.md).
    offline = own_broker.register_stopped_broker()
    with chaos.run(
        "results topic unavailable",
        bootstrap=own_broker.bootstrap,
        results_replicas=[[1, offline]] * 3,
        # The broker's clock, which Outage judges by.
        results_config={"message.timestamp.type": "LogAppendTime"},
    ) as run:
        run.workload.good(scale.records, allowed=AFTER_AN_ABORT)
        run.produce(rate=scale.rate)
        run.start("a")
        run.wait_progress(0.2)
        outage = Outage(run)
        with run.fault("results topic below min.insync.replicas"):
            infra.set_topic_config(run.bootstrap, run.results_topic, "min.insync.replicas", "2")
            # From when the leader refuses writes, not from the request: the change reaches it
            # asynchronously, and on a loaded machine seconds later.
            outage.broken(infra.wait_until_refused(run.bootstrap, run.results_topic))
            until = time.monotonic() + scale.outage_s
            while time.monotonic() < until:
                run.sleep(0.5)
                outage.sample()
            pending = run.total - run.done()
            infra.set_topic_config(run.bootstrap, run.results_topic, "min.insync.replicas", None)
            outage.restored()
        run.faults["records without outcome when restored"] = pending
        run.finish_checks.append(outage.check)
        report = run.finish()
    assert pending > 0, "the fault window ended with no record left to hold back: too short"
    assert not report.violations(), report.summary()
