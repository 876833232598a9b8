"""The `policy` scenario: the policy stage's CPU per notification, against render+compose of one
mail measured in the same process, as the other rows are read against the same run's
references (absolute times move with the machine; the ratio much less).

The stage as `herald run` has it: local SQLite tables holding 100,000 users' choices and
100,000 suppressed addresses, embedded SQLite caps, pace in memory, the idempotency claim on
the in-memory store. Two configurations: `default` (the project's routing table: consent and
suppression lookups, no cap, no pace limit) and `loaded` (a cap on every optional category,
a relay and a domain pace, none of them binding, so each notification pays for every rule).
Each is timed in thread CPU time over the mixed events' notifications, best of a few repeats.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.events import OPTIONAL, EventFactory
from bench.workers import _prerender
from service.events.decoder import EventDecoder
from service.metrics import Metrics
from service.policy.pace import Pace
from service.policy.policy import Policy
from service.policy.state import PolicyState
from service.routing import CapSpec, Category, Notification, route
from service.settings import Settings
from service.stores.consent import Preference
from service.stores.pace import MemoryPaceStore
from service.stores.running import codecs, open_caps, open_tables
from service.stores.suppressions import Scope, Suppression, address_digest, address_hint
from service.testing import MemoryStore

KEY = "bench-only-address-key-of-32-characters-or-more"
ROWS = 100_000
UNBOUND = {"rate": "1000000/s", "burst": 1_000_000}


def _notifications(loaded: Any, types: list[str], k: int) -> list[Notification]:
    """The notifications of `k` mixed events, each to its own user and address."""
    factory = EventFactory(loaded, "", types, "example.com")
    decoder = EventDecoder(loaded.bindings, loaded.store)
    raws = [factory.make()[::2] for _ in range(k)]

    async def decode_all() -> list[Any]:
        return [await decoder.decode(topic, value) for topic, value in raws]

    return [n for event in asyncio.run(decode_all()) for n in route(event, loaded.table)]


def _fill(state: PolicyState, loaded: Any) -> None:
    """Other users' choices and other addresses' suppressions, as a table of a live system."""
    preferences, suppressions = codecs(loaded.store)
    at = datetime(2026, 12, 1, tzinfo=UTC)
    choices = []
    for i in range(ROWS):
        p = Preference(
            user_id=f"other-{i}", scope="all", subscribed=False, updated_at=at, source="bench"
        )
        choices.append((p.key, preferences.encode(p)))
    state.tables.apply_preferences(choices)
    suppressed = []
    for i in range(ROWS):
        email = f"gone-{i}@example.net"
        s = Suppression(
            address_digest=address_digest(email, KEY.encode()),
            address_hint=address_hint(email),
            scope=Scope.ALL,
            reason="hard_bounce",
            source="bench",
            created_at=at,
        )
        suppressed.append((s.key, suppressions.encode(s)))
    state.tables.apply_suppressions(suppressed)


def _state(loaded: Any, directory: Path, loaded_rules: bool) -> PolicyState:
    pace: dict[str, Any] = {}
    if loaded_rules:
        pace = {"relay": UNBOUND, "domains": {"example.com": UNBOUND}}
    settings = Settings(
        policy={"state_path": directory / "policy.sqlite3", "address_key": KEY},
        pace=pace,
    )
    categories = dict(loaded.table.categories)
    if loaded_rules:
        cap = CapSpec(max=1_000_000_000, per="24h")
        for c in OPTIONAL:
            category = Category(c)
            categories[category] = dataclasses.replace(categories[category], cap=cap)
    return PolicyState(
        tables=open_tables(settings, loaded.store),
        caps=open_caps(settings),
        address_key=KEY.encode(),
        categories=categories,
        pace=Pace(settings.pace, MemoryPaceStore()),
        hold_s=settings.pace.hold_s,
    )


def _cpu_per_item(
    step: Callable[[], Callable[[Notification], Awaitable[object]]],
    notifications: list[Notification],
) -> float:
    """Thread CPU seconds per call of the function `step` makes, over every notification, the
    best of three passes, each with a fresh function (fresh claims)."""

    async def run() -> float:
        best = float("inf")
        for _ in range(3):
            call = step()
            t0 = time.thread_time()
            for n in notifications:
                await call(n)
            best = min(best, (time.thread_time() - t0) / len(notifications))
        return best

    return asyncio.run(run())


def _decisions(state: PolicyState) -> Callable[[], Callable[[Notification], Awaitable[object]]]:
    """A fresh stage's `decide`, on an empty idempotency store."""
    return lambda: Policy(MemoryStore(), state, Metrics()).decide


def _claims() -> Callable[[Notification], Awaitable[object]]:
    """The idempotency claim alone, on an empty store: the part the stage had before its rules."""
    store = MemoryStore()
    return lambda n: store.claim(n.idempotency_key)


def measure(loaded: Any, types: list[str], k: int = 2_000) -> dict[str, float]:
    """Microseconds per notification of each configuration, and its share of render+compose."""
    _, render_s = _prerender(loaded, types, 200)
    render_s = min(render_s, _prerender(loaded, types, 200)[1])
    notifications = _notifications(loaded, types, k)
    out: dict[str, float] = {"render_compose_us": render_s * 1e6}
    out["claim_us"] = _cpu_per_item(_claims, notifications) * 1e6
    with tempfile.TemporaryDirectory(prefix="herald-bench-policy-") as tmp:
        for name, loaded_rules in (("default", False), ("loaded", True)):
            directory = Path(tmp) / name
            directory.mkdir()
            state = _state(loaded, directory, loaded_rules)
            _fill(state, loaded)
            us = _cpu_per_item(_decisions(state), notifications) * 1e6
            out[f"{name}_us"] = us
            out[f"{name}_share"] = us / out["render_compose_us"]
    return out


def summary(r: dict[str, float]) -> str:
    """One line for the report."""
    return (
        f"policy stage: {r['default_us']:.0f} µs CPU per notification as configured by default "
        f"(consent, suppression, claim) = {r['default_share']:.1%} of render+compose, "
        f"{r['loaded_us']:.0f} µs with caps and pace on every rule = {r['loaded_share']:.1%} "
        f"({r['render_compose_us']:.0f} µs/mail, same process; the claim alone "
        f"{r['claim_us']:.0f} µs)"
    )
