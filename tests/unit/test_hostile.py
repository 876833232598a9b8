"""Hostile data, planted into every field of every event type and run through the handler
(real SMTP on loopback, the project's schemas, table and templates): each record ends in one
outcome per route (or one for the record), nothing raises, and no record takes more than
100 ms of the event loop's CPU (timed on the loop thread's own clock, so another process
busy on the machine does not count)."""

from __future__ import annotations

import asyncio
import copy
import gc
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.app import Loaded
from service.events.schemas import encode_single_object
from service.flow.loop_time import LoopTime
from service.outcomes.records import decode_outcome
from service.render.renderer import freeze_heap
from service.testing import SmtpServer, record
from tests.conftest import example_record
from tests.unit.test_flow import Rig

LOOP_BUDGET_S = 0.1
# Avro strings are UTF-8: no lone surrogates. The ignore: a 1-tuple gets no
# Collection[Literal] context in mypy (python/mypy#8921), so ("Cs",) reads as tuple[str].
_TEXT = st.characters(exclude_categories=("Cs",))  # type: ignore[arg-type]
HOSTILE = st.one_of(
    st.text(_TEXT, max_size=200),
    st.sampled_from(
        [
            "",
            "\r\nBcc: victim@example.com",
            "\x00\x07\x1b[31m",
            "\u202eevil\u202c",
            "javascript:alert(document.cookie)",
            "https://example.com/\r\nX: y",
            "https://user@evil.example/",
            "-".join(["a"] * 2000),  # a locale of many parts
            " " * 3000 + "é",  # long runs of spaces before a non-ASCII word
            "=?utf-8?b?SGk=?=",
            "{{ 7 * 7 }}{% for x in range(9) %}",
            r"\1\g<0>",
            "a" * 65 + "@example.com",
            "josé@exámple.com",
            "Europe/Nowhere",
            "x" * 5000,  # over processing.max_string_chars
        ]
    ),
)


def _strings(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every string of an Avro-ready record."""
    if isinstance(node, str):
        yield path
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, (*path, i))


def _plant(data: dict[str, Any], path: tuple[Any, ...], value: str) -> None:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def rig(loaded: Loaded, loop: asyncio.AbstractEventLoop) -> Iterator[Rig]:
    loaded.renderer.warm()  # as `herald run` does before consuming: compiled, formats loaded
    freeze_heap()  # and then hides its start-up heap from the collector, as `herald run` does
    try:
        with SmtpServer(smtputf8=True) as server:
            r = Rig(loaded, server.port, max_attempts=1)
            yield r
            loop.run_until_complete(r.mailer.close())
    finally:
        gc.unfreeze()


EVENT_TYPES = sorted(
    [
        "order.confirmed",
        "user.signed_up",
        "login.suspicious",
        "user.activated",
        "onboarding.step_due",
        "team.invitation_sent",
        "document.shared",
        "task.assigned",
        "comment.mentioned",
        "task.due_soon",
        "report.ready",
        "password.reset_requested",
        "login.otp_requested",
        "password.changed",
        "email.changed",
        "order.shipped",
        "payment.succeeded",
        "cart.abandoned",
        "stock.below_threshold",
    ]
)


def test_every_event_type_is_planted_into(loaded: Loaded) -> None:
    assert sorted(loaded.table.events) == EVENT_TYPES


# A failing example's repr is large (a 5,000-character value): readable beats short here.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_type=st.sampled_from(EVENT_TYPES), where=st.integers(0, 10_000), value=HOSTILE)
def test_any_string_in_any_field_gives_one_outcome_per_route_within_the_budget(
    rig: Rig,
    loop: asyncio.AbstractEventLoop,
    loaded: Loaded,
    event_type: str,
    where: int,
    value: str,
) -> None:
    planted = example_record(loaded, event_type)
    planted["occurred_at"] = datetime.now(UTC)
    paths = list(_strings(planted))
    path = paths[where % len(paths)]
    _plant(planted, path, value)
    planted["event_id"] = f"hostile-{time.monotonic_ns()}"
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    try:
        value_bytes = encode_single_object(schema, copy.deepcopy(planted))
    except ValueError:  # an Avro enum takes only its symbols: no producer can write this
        assume(False)
    raw = record(event_type, value_bytes, offset=1)

    timed = LoopTime(rig.handler.handle(raw), time.thread_time)
    handled = loop.run_until_complete(timed)

    outcomes = [
        decode_outcome(r.value or b"", loaded.store)
        for r in handled.records
        if r.topic == "outcomes"
    ]
    routes = len(loaded.table.routes[event_type])
    record_level = [o for o in outcomes if o["notification_type"] is None]
    assert (len(outcomes), record_level) in ((routes, []), (1, record_level)), (path, outcomes)
    assert all(o["reason"] != "internal_error" for o in outcomes), (path, outcomes)
    assert timed.seconds <= LOOP_BUDGET_S, (path, f"{timed.seconds * 1000:.1f} ms")
