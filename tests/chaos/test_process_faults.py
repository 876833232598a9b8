"""Herald's own process failing or moving: kill -9 at random points, and a second instance
joining and leaving the group mid-run.

A killed instance restarts with the same transactional id and idempotency store, so whatever it
had sent but not yet reported ends DEDUPLICATED, and whatever it was handing over when it died
ends UNKNOWN: never a second copy, never a second outcome.
"""

from __future__ import annotations

import random

from tests.chaos.conftest import Chaos

AFTER_A_CRASH = frozenset({"SENT", "DEDUPLICATED", "UNKNOWN"})
"""A crash may leave a notification accepted-but-unreported, or cut off during DATA."""
AFTER_A_HANDOVER = frozenset({"SENT", "DEDUPLICATED"})
"""A graceful rebalance drains in-flight work; a redelivery may still find it accepted."""


def test_kill_9_at_random_points_and_restart(chaos: Chaos) -> None:
    scale = chaos.scale
    rng = random.Random(chaos.seed)
    with chaos.run("kill -9 and restart") as run:
        run.workload.good(scale.records, allowed=AFTER_A_CRASH)
        run.smtp.faults.slow_ms = 20  # so that kills also land inside SMTP transactions
        run.produce(rate=scale.rate)
        run.start("a")
        for point in sorted(rng.uniform(0.05, 0.9) for _ in range(scale.kills)):
            run.wait_progress(point)
            run.sleep(rng.uniform(0, 0.3))
            with run.fault("kill -9 until the restart is ready"):
                run.kill("a")
                run.start("a")
        report = run.finish()
    assert not report.violations(), report.summary()
    assert report.faults["kill -9"] == scale.kills


def test_second_instance_joins_and_leaves(chaos: Chaos, chaos_redis_url: str) -> None:
    """Two instances in one group share the Redis store; partitions move back and forth."""
    scale = chaos.scale
    with chaos.run(
        "instances join and leave (rebalances)", backend="redis", redis_url=chaos_redis_url
    ) as run:
        run.workload.good(scale.records, allowed=AFTER_A_HANDOVER)
        # Slower than production (4 connections x 50 ms < 100 records/s), so every rebalance
        # finds records in flight that the revoked owner must finish and commit.
        run.smtp.faults.slow_ms = 50
        run.produce(rate=scale.rate)
        run.start("a")
        step = 0.7 / (2 * scale.rebalances)
        for i in range(scale.rebalances):
            run.wait_progress(0.25 + 2 * i * step)
            with run.fault("b joins"):
                run.start("b")
            run.wait_progress(0.25 + (2 * i + 1) * step)
            with run.fault("b leaves"):
                run.stop("b")
            if i % 2:  # the first instance leaves and comes back too
                with run.fault("a leaves and rejoins"):
                    run.start("b")
                    run.stop("a")
                    run.start("a")
                    run.stop("b")
        report = run.finish()
    assert not report.violations(), report.summary()
