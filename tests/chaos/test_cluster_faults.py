"""Faults of a real cluster under Herald: three KRaft nodes (deploy/kafka/cluster.sh), every
topic with 3 replicas and `min.insync.replicas=2`, the internal ones included.

Partition leaders move while records flow; the node coordinating Herald's transactions is
killed with -9 and restarted; the links between the nodes are cut until every partition of the
transaction-state and offsets topics is down to its leader, below the minimum ISR, and then
mended. Herald stays up through all of it, and every record ends with exactly one outcome and at
most one mail.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from tests.chaos.checker import Report
from tests.chaos.cluster import OFFSETS, TXN_STATE, KafkaCluster
from tests.chaos.conftest import Chaos
from tests.chaos.harness import Outage, Run

AFTER_AN_ABORT = frozenset({"SENT", "DEDUPLICATED"})
"""An aborted transaction hands its records back; the store then knows they were accepted."""
LANE_SUFFIXES = ("", "-express", "-retry")
"""Added to an instance's transactional id per lane (service/flow/plan.py)."""


def _replicated(cluster: KafkaCluster, run: Run) -> Callable[[Report], dict[str, int]]:
    """A finish check: every topic of the run, those Herald created included, has 3 replicas."""

    def check(report: Report) -> dict[str, int]:
        parts = cluster.partitions()
        mine = [v for (t, _p), v in parts.items() if t.startswith(run.prefix)]
        report.faults["partitions of the run's topics"] = len(mine)
        return {
            "partitions of the run's topics with fewer than 3 replicas": sum(
                len(v.replicas) < 3 for v in mine
            )
        }

    return check


def test_leaders_moved_while_records_flow(cluster_chaos: Chaos, cluster: KafkaCluster) -> None:
    """Leadership of the input, results, transaction-state and offsets partitions moved to
    another in-sync replica, round after round, mid-run: nothing lost or sent twice."""
    chaos = cluster_chaos
    scale = chaos.scale
    with chaos.run("cluster: partition leaders moved", bootstrap=cluster.bootstrap) as run:
        run.workload.good(scale.records, allowed=AFTER_AN_ABORT)
        run.finish_checks.append(_replicated(cluster, run))
        # Herald first and a third of the usual pace, so that production outlasts the rounds
        # (a few seconds each) and every round finds records flowing.
        run.start("a")
        run.produce(rate=scale.rate / 3)
        topics = [*run.input_topics, run.results_topic, TXN_STATE, OFFSETS]
        moved: list[int] = []
        stayed: list[int] = []
        pending: list[int] = []
        for i in range(scale.leader_moves):
            run.wait_progress(0.1 + 0.7 * i / scale.leader_moves)
            pending.append(run.total - run.done())
            with run.fault("leaders moved"):
                before = cluster.partitions(topics)
                cluster.move_leaders(topics)
                after = cluster.partitions(topics)
            moved.append(sum(before[k].leader != v.leader for k, v in after.items()))
            stayed.append(len(after) - moved[-1])
        run.faults["leaders moved per round"] = moved
        run.faults["records without outcome at each round"] = pending
        run.finish_checks.append(
            lambda _: {"partitions whose leader stayed in place in a round": sum(stayed)}
        )
        report = run.finish()
    assert not report.violations(), report.summary()


def test_broker_killed_mid_transaction(cluster_chaos: Chaos, cluster: KafkaCluster) -> None:
    """The node leading Herald's transaction coordinator killed with -9 while commits are in
    flight, restarted a few seconds later: Herald rides out the lost coordinator and leaders."""
    chaos = cluster_chaos
    scale = chaos.scale
    with chaos.run(
        "cluster: coordinator's node killed (kill -9)", bootstrap=cluster.bootstrap
    ) as run:
        run.workload.good(scale.records, allowed=AFTER_AN_ABORT)
        run.finish_checks.append(_replicated(cluster, run))
        # Herald first and a quarter of the usual pace: each kill holds the run up for the
        # node's restart and catching up, and every kill must still find records flowing.
        run.start("a")
        run.produce(rate=scale.rate / 4)
        base = run.herald_env("a")["HERALD_KAFKA__TRANSACTIONAL_ID"]
        ids = [base + suffix for suffix in LANE_SUFFIXES]
        killed: list[int] = []
        led: list[int] = []
        orphaned: list[int] = []
        pending: list[int] = []
        for i in range(scale.broker_kills):
            run.wait_progress(0.1 + 0.5 * i / scale.broker_kills)
            # The node coordinating most of the instance's transactional ids (one per lane).
            node = Counter(cluster.coordinator(t) for t in ids).most_common(1)[0][0]
            led.append(sum(v.leader == node for v in cluster.partitions().values()))
            pending.append(run.total - run.done())
            with run.fault("node killed (-9) until back in sync"):
                cluster.kill(node)
                # The controller fences a node whose last heartbeat (every 2 s) is older than
                # broker.session.timeout.ms (9 s) and moves its leaders: 15 s down at full
                # scale is past that. At quick scale, 1.5 s, they move when the node registers
                # again. The report says which, per kill.
                run.sleep(scale.broker_down_s)
                orphaned.append(sum(v.leader == node for v in cluster.partitions().values()))
                cluster.start_node(node)
                cluster.wait_in_sync()
            killed.append(node)
        run.faults["nodes killed"] = killed
        run.faults["partitions the killed node led"] = led
        run.faults["of which still led by it when restarted"] = orphaned
        run.faults["records without outcome at each kill"] = pending
        report = run.finish()
    assert not report.violations(), report.summary()


def test_isr_below_minimum_and_restored(cluster_chaos: Chaos, cluster: KafkaCluster) -> None:
    """Followers cut off from their leaders until every partition of the transaction-state and
    offsets topics has an ISR of one, below `min.insync.replicas=2`, then reconnected: Herald
    stalls, commits nothing ahead of its outcomes, and finishes once they are back in sync."""
    chaos = cluster_chaos
    scale = chaos.scale
    with chaos.run(
        "cluster: ISR below min.insync.replicas",
        bootstrap=cluster.bootstrap,
        # The broker's clock, which Outage judges by.
        results_config={"message.timestamp.type": "LogAppendTime"},
    ) as run:
        run.workload.good(scale.records, allowed=AFTER_AN_ABORT)
        run.finish_checks.append(_replicated(cluster, run))
        run.produce(rate=scale.rate)
        run.start("a")
        run.wait_progress(0.2)
        internal = [TXN_STATE, OFFSETS]
        outage = Outage(run)
        with run.fault("followers cut off until back in sync"):
            cut = time.monotonic()
            cluster.links.cut()
            # A follower that cannot fetch stays in the ISR of a partition that takes no
            # writes (it is not behind), so every partition of the coordinators' topics is
            # written to: then none of them can take a write, whatever Herald's lanes were
            # doing at the cut. The results topic cannot be written either way: a transaction
            # adds a partition through its coordinator first.
            cluster.write_internal(run.results_topic)
            parts = cluster.wait_until(
                lambda parts: all(len(v.isr) < 2 for v in parts.values()),
                "every coordinator partition below min.insync.replicas",
                internal,
                timeout_s=60,
            )
            run.faults["s from the cut to every coordinator below the minimum ISR"] = round(
                time.monotonic() - cut, 1
            )
            run.faults["coordinator partitions below the minimum ISR"] = len(parts)
            outage.broken()
            until = time.monotonic() + scale.outage_s
            while time.monotonic() < until:
                run.sleep(0.5)
                outage.sample()
            pending = run.total - run.done()
            cluster.links.mend()
            outage.restored()
            cluster.wait_in_sync()
        run.faults["records without outcome when reconnected"] = pending
        run.finish_checks.append(outage.check)
        report = run.finish()
    assert pending > 0, "the fault window ended with no record left to hold back: too short"
    assert not report.violations(), report.summary()
