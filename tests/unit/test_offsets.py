"""Offset watermarks: never commit past an unfinished record."""

from __future__ import annotations

from service.kafka.offsets import OffsetTracker

TP = ("t", 0)


def test_out_of_order_completion_commits_only_the_contiguous_prefix() -> None:
    """10 and 12 done, 11 still running: the position stays at 11 until 11 finishes."""
    t = OffsetTracker()
    for o in (10, 11, 12):
        t.track(TP, o)
    assert {} == t.committable()
    t.done(TP, 10)
    t.done(TP, 12)
    assert {TP: 11} == t.committable()
    t.committed({TP: 11})
    assert {} == t.committable()
    t.done(TP, 11)
    assert {TP: 13} == t.committable()
    assert 0 == t.in_flight()


def test_partitions_are_independent_and_forgettable() -> None:
    t = OffsetTracker()
    other = ("t", 1)
    t.track(TP, 5)
    t.track(other, 100)
    t.done(other, 100)
    assert {other: 101} == t.committable()
    assert 1 == t.in_flight([TP])
    t.forget([TP])
    t.done(TP, 5)  # a late completion for a revoked partition is ignored
    assert {other: 101} == t.committable()
    assert 0 == t.in_flight()
