"""Lanes: which consumer of an instance reads which topic (the broker test is in integration)."""

from __future__ import annotations

from typing import Any

import pytest

from service.app import load
from service.flow.plan import LanePlan, plan_lanes
from service.outcomes.retries import RetryPolicy
from tests.conftest import project_settings


def _plan(**overrides: Any) -> list[LanePlan]:
    settings = project_settings(**overrides)
    loaded = load(settings)
    retries = RetryPolicy(settings.retry, settings.kafka.topic_prefix)
    return plan_lanes(loaded.bindings, loaded.table, settings.processing, retries.topics)


def _lanes(**overrides: Any) -> dict[str, list[str]]:
    return {lane.name: lane.topics for lane in _plan(**overrides)}


def test_critical_topics_retries_and_the_rest_each_have_a_lane() -> None:
    lanes = _lanes()
    assert ["express", "standard", "retry"] == list(lanes)
    assert "login.otp_requested" in lanes["express"]
    assert "order.confirmed" in lanes["standard"]
    assert ["herald.retry.60s", "herald.retry.600s", "herald.retry.3600s"] == lanes["retry"]
    every = [t for topics in lanes.values() for t in topics]
    assert len(every) == len(set(every)), "a topic read by two lanes"


def test_retry_topics_stay_apart_without_express_lane() -> None:
    """Their empty partitions must not weigh in the assignment of the event topics."""
    lanes = _lanes(processing={"express_priority": "off"})
    assert ["standard", "retry"] == list(lanes)
    assert not any(".retry." in t for t in lanes["standard"])


@pytest.mark.parametrize(("lane", "suffix"), [("express", "-express"), ("retry", "-retry")])
def test_each_lane_but_standard_has_its_own_transactional_id(lane: str, suffix: str) -> None:
    by_name = {x.name: x for x in _plan()}
    assert suffix == by_name[lane].suffix
    assert "" == by_name["standard"].suffix  # an upgrade still fences the old instance
