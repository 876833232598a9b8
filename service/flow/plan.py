"""Which lanes an instance runs: a consumer-group member per kind of traffic."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from service.events.model import TopicBinding
from service.routing import Priority, RoutingTable
from service.settings import ProcessingSettings


@dataclass(frozen=True, slots=True, kw_only=True)
class LanePlan:
    """A consumer of its own in the group: topics, in-flight budget and transactions."""

    name: str
    topics: list[str]
    max_in_flight: int

    @property
    def suffix(self) -> str:
        """Added to the client and transactional ids; none for the standard lane, so an
        upgrade keeps the transactional id and fences the instance it replaces."""
        return "" if self.name == "standard" else f"-{self.name}"


def express_priority(processing: ProcessingSettings) -> Priority | None:
    """The priority from which mail takes the express lane; None when lanes are off."""
    chosen = processing.express_priority
    return None if chosen == "off" else Priority(chosen)


def plan_lanes(
    bindings: Mapping[str, TopicBinding],
    table: RoutingTable,
    processing: ProcessingSettings,
    retry_topics: list[str],
) -> list[LanePlan]:
    """The express lane (topics with a route of `processing.express_priority` or above), if
    any; the standard lane with every other event topic; the retry lane.

    The retry topics have a member of their own: in the standard lane their partitions, nearly
    always empty, would count for the assignor like busy ones, and with two instances one would
    be handed the retry partitions and a quarter of the event partitions, the other the rest.
    """
    express_events = table.express_events(express_priority(processing))
    express = sorted(t for t, b in bindings.items() if b.event_type in express_events)
    standard = sorted(t for t in bindings if t not in express)
    lanes = [
        LanePlan(name="express", topics=express, max_in_flight=processing.express_max_in_flight),
        LanePlan(name="standard", topics=standard, max_in_flight=processing.max_in_flight),
        LanePlan(name="retry", topics=retry_topics, max_in_flight=processing.max_in_flight),
    ]
    return [lane for lane in lanes if lane.topics]
