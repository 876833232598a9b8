"""A lane's flow control: what pauses consumption and what resumes it, and the states it
goes through."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from service.flow.handler import Handled
from service.flow.lane import Lane, LaneState
from service.kafka.records import RawRecord
from service.kafka.transactions import TransactionalProducer
from service.metrics import Metrics
from service.outcomes.retries import RetryPolicy
from service.settings import KafkaSettings, ProcessingSettings, RetrySettings

TP = ("events", 0)


class Idle:
    """A confluent-kafka producer that is never used here."""

    def __init__(self, conf: dict[str, object]) -> None:
        self.conf = conf


class Switch:
    """A stage holding consumption while `holding` is set."""

    def __init__(self) -> None:
        self.holding = False


async def _never(raw: RawRecord) -> Handled:
    raise AssertionError("no record is consumed here")


@pytest.fixture
async def lane_of() -> AsyncIterator[list[Lane]]:
    made: list[Lane] = []
    yield made
    for lane in made:
        await lane._client.close()


def _lane(made: list[Lane], max_in_flight: int, switch: Switch) -> Lane:
    lane = Lane(
        KafkaSettings(bootstrap_servers="127.0.0.1:1"),
        ProcessingSettings(max_in_flight=max_in_flight),
        [TP[0]],
        _never,
        TransactionalProducer({}, "tid", 1000, client=Idle),
        RetryPolicy(RetrySettings()),
        Metrics(),
        [switch],
    )
    lane._client.assigned.add(TP)
    made.append(lane)
    return lane


async def test_records_awaiting_their_commit_do_not_use_the_processing_budget(
    lane_of: list[Lane],
) -> None:
    """Finished records waiting for the next transaction do not count against
    `max_in_flight`; a pile of them as large as 8x the budget still pauses, as when commits
    keep failing. A full budget pauses only once it has stayed full for a second."""
    lane = _lane(lane_of, 4, Switch())

    def paused(processing: int, finished: int, full_for_s: float = 0) -> bool:
        # The ignore: stand-ins for the tasks, of which the lane reads only how many there are.
        lane._tasks = {object() for _ in range(processing)}  # type: ignore[misc]
        lane._done = {TP: {offset: [] for offset in range(finished)}}
        if full_for_s:
            lane._full_since = time.monotonic() - full_for_s
        lane._flow_control()
        return lane._client.paused

    assert not paused(3, 12)  # 12 finished (3x the budget), 3 at work: room for one more
    assert not paused(4, 12)  # the budget is used: polling stops, partitions stay fetched
    assert not paused(4, 12, full_for_s=0.5)
    assert paused(4, 12, full_for_s=1.0)  # full for a second: paused
    assert paused(3, 12)  # not yet back to half
    assert not paused(2, 12)
    assert paused(0, 32)  # 8 x 4 finished and not committed: commits are failing
    assert paused(0, 17)
    assert not paused(0, 16)


async def test_a_holding_stage_pauses_until_it_lets_go(lane_of: list[Lane]) -> None:
    """The breaker's interface: while a hold is on the lane stays paused, whatever its load."""
    switch = Switch()
    lane = _lane(lane_of, 4, switch)
    lane._flow_control()
    assert not lane._client.paused
    switch.holding = True
    lane._flow_control()
    assert lane._client.paused
    switch.holding = False
    lane._flow_control()
    assert not lane._client.paused


async def test_a_lane_is_ready_only_once_a_first_assignment_came(lane_of: list[Lane]) -> None:
    """created → joining → running: /readyz turns ready at the first assignment."""
    lane = _lane(lane_of, 4, Switch())
    assert LaneState.CREATED is lane.state
    lane.state = LaneState.JOINING
    assert not lane.ready
    await lane._assigned([TP])
    assert LaneState.RUNNING is lane.state
    assert lane.ready
