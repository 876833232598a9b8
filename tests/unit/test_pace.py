"""Outbound pace: the warm-up ramp, the reserved share, the buckets' arithmetic, on the
embedded store and (timed by a simulated clock, through the same Lua script) on Redis."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from service.policy.pace import Admission, Pace, PaceMetrics, warmup_limit
from service.routing import Priority
from service.settings.groups import _Refused
from service.settings.pace import SENDGRID_RAMP, PaceSettings, RampStep, per_second
from service.stores.pace import EPSILON, MemoryPaceStore, ready_at, refill
from tests.pacing import START, Clock, StoreFactory, pace_settings, stores

PARIS = ZoneInfo("Europe/Paris")
LATE = START + 22 * 3600 + 59 * 60
"""2026-12-01 23:59 in Paris (UTC+1 in winter)."""
MIDNIGHT = START + 23 * 3600
"""2026-12-02 00:00 in Paris."""


@pytest.fixture(params=["memory", "redis"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Stores on either backend; both are timed by the test's clock here."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    async with stores(request.param, url) as make:
        yield make


async def admit_all(pace: Pace, n: int, priority: Priority, domain: str = "example.com") -> int:
    """How many of `n` admits went."""
    return sum([(await pace.admit(domain, priority)).go for _ in range(n)])


# The warm-up ramp, as a pure function.


def test_the_ramp_rises_at_midnight_in_its_time_zone() -> None:
    """23:59 on day 0 in Paris has day 0's limits; 00:00 there, day 1's, though UTC's date
    has not changed."""
    steps = [RampStep(day=0, per_hour=20, per_day=100), RampStep(day=1, per_hour=39)]
    start = date(2026, 12, 1)

    before = warmup_limit(datetime.fromtimestamp(LATE, UTC), steps=steps, start=start, zone=PARIS)
    after = warmup_limit(
        datetime.fromtimestamp(MIDNIGHT, UTC), steps=steps, start=start, zone=PARIS
    )

    assert before is not None
    assert after is not None
    assert (0, 20, 100) == (before.day, before.per_hour, before.per_day)
    assert (1, 39, None) == (after.day, after.per_hour, after.per_day)
    assert MIDNIGHT == before.day_ends.timestamp() == before.hour_ends.timestamp()
    assert date(2026, 12, 1) == datetime.fromtimestamp(MIDNIGHT, UTC).date()


def test_a_step_holds_until_the_next_and_the_last_for_its_own_day() -> None:
    """SendGrid's ramp: day 3 has day 2's cap, day 30 the last, day 31 none; before the start
    date, day 0's."""
    start = date(2026, 12, 1)

    def per_hour(day: float) -> int | None:
        at = datetime.fromtimestamp(START + day * 86_400 + 3600, UTC)
        limit = warmup_limit(at, steps=SENDGRID_RAMP, start=start, zone=ZoneInfo("UTC"))
        return None if limit is None else limit.per_hour

    assert [20, 20, 39, 39, 484_029, None, 20] == [
        per_hour(0),
        per_hour(1),
        per_hour(2),
        per_hour(3),
        per_hour(30),
        per_hour(31),
        per_hour(-3),
    ]


def test_hour_windows_start_at_the_zones_full_hours() -> None:
    """In Kolkata (UTC+5:30), 10:20 local is in the window 10:00-11:00 local."""
    kolkata = ZoneInfo("Asia/Kolkata")
    at = datetime(2026, 12, 1, 10, 20, tzinfo=kolkata)
    limit = warmup_limit(
        at, steps=[RampStep(day=0, per_hour=5)], start=date(2026, 12, 1), zone=kolkata
    )

    assert limit is not None
    assert datetime(2026, 12, 1, 10, tzinfo=kolkata) == limit.hour
    assert datetime(2026, 12, 1, 11, tzinfo=kolkata) == limit.hour_ends


# The ramp through admit, on both stores.


async def test_the_ramp_defers_to_midnight_then_admits_under_the_next_days_limit(
    make_store: StoreFactory,
) -> None:
    """Day 0 allows 2 an hour: the third at 23:59 waits until midnight, when day 1's 5 an
    hour apply."""
    clock = Clock(LATE)
    s = pace_settings(
        warmup=[{"day": 0, "per_hour": 2}, {"day": 1, "per_hour": 5}],
        warmup_start="2026-12-01",
        warmup_time_zone="Europe/Paris",
        critical_share=0,
    )
    pace = Pace(s, make_store(clock), clock=clock)

    assert 2 == await admit_all(pace, 2, Priority.NORMAL)
    deferred = await pace.admit("example.com", Priority.NORMAL)
    clock.now = MIDNIGHT
    assert 5 == await admit_all(pace, 5, Priority.NORMAL)
    sixth = await pace.admit("example.com", Priority.NORMAL)

    assert Admission(go=False, not_before=MIDNIGHT, wait_s=60.0, limit="warmup_hour") == deferred
    assert (False, MIDNIGHT + 3600, "warmup_hour") == (sixth.go, sixth.not_before, sixth.limit)


async def test_the_daily_cap_defers_to_the_next_midnight(make_store: StoreFactory) -> None:
    """3 a day at 10 an hour: the fourth of the day waits for midnight, not for the hour."""
    clock = Clock(START + 9 * 3600)  # 10:00 in Paris
    s = pace_settings(
        warmup=[{"day": 0, "per_hour": 10, "per_day": 3}],
        warmup_start="2026-12-01",
        warmup_time_zone="Europe/Paris",
        critical_share=0,
    )
    pace = Pace(s, make_store(clock), clock=clock)

    assert 3 == await admit_all(pace, 3, Priority.LOW)
    fourth = await pace.admit("example.com", Priority.LOW)

    assert (False, MIDNIGHT, "warmup_day") == (fourth.go, fourth.not_before, fourth.limit)


# The reserved share.


async def test_bulk_leaves_the_reserve_to_critical_mail(make_store: StoreFactory) -> None:
    """Burst 10, 1/min, 20% reserved: bulk gets 8 and waits a minute for a token above the
    reserve; critical mail still gets the 2 reserved, then waits for the next token."""
    clock = Clock()
    s = pace_settings(relay={"rate": "1/min", "burst": 10}, critical_share=0.2)
    pace = Pace(s, make_store(clock), clock=clock)

    assert 8 == await admit_all(pace, 8, Priority.LOW)
    bulk = await pace.admit("example.com", Priority.HIGH)  # high is bulk: reserved_from=critical
    assert 2 == await admit_all(pace, 2, Priority.CRITICAL)
    critical = await pace.admit("example.com", Priority.CRITICAL)

    assert Admission(go=False, not_before=START + 60, wait_s=60.0, limit="relay") == bulk
    assert Admission(go=False, not_before=START + 60, wait_s=60.0, limit="relay") == critical


async def test_critical_mail_may_use_the_bulk_share_when_it_is_free(
    make_store: StoreFactory,
) -> None:
    """With no bulk waiting, critical mail gets the whole burst; bulk then waits for the
    bucket to refill above the reserve (3 tokens at 1/min: three minutes)."""
    clock = Clock()
    s = pace_settings(relay={"rate": "1/min", "burst": 10}, critical_share=0.2)
    pace = Pace(s, make_store(clock), clock=clock)

    assert 10 == await admit_all(pace, 12, Priority.CRITICAL)
    bulk = await pace.admit("example.com", Priority.NORMAL)

    assert (False, START + 180, "relay") == (bulk.go, bulk.not_before, bulk.limit)


async def test_the_ramp_reserves_its_share_too(make_store: StoreFactory) -> None:
    """10 an hour, 20% reserved: bulk 8, critical the other 2."""
    clock = Clock(START + 3600)
    s = pace_settings(
        warmup=[{"day": 0, "per_hour": 10}], warmup_start="2026-12-01", critical_share=0.2
    )
    pace = Pace(s, make_store(clock), clock=clock)

    assert 8 == await admit_all(pace, 10, Priority.NORMAL)
    assert 2 == await admit_all(pace, 10, Priority.CRITICAL)


def test_reserved_from_high_lets_high_mail_use_the_reserve() -> None:
    """`reserved_from: high` counts high and critical mail as reserved, normal not."""
    pace = Pace(pace_settings(reserved_from="high"), MemoryPaceStore())

    assert [True, True, False, False] == [
        pace.reserved(p) for p in (Priority.CRITICAL, Priority.HIGH, Priority.NORMAL, Priority.LOW)
    ]


# The buckets' arithmetic.


def test_refill_adds_the_rate_over_the_time_passed_up_to_the_burst() -> None:
    """0.5 tokens + 0.3 s at 5/s = 2; never past the burst; a clock going back adds nothing."""
    assert 2.0 == pytest.approx(refill(0.5, 0.3, rate_per_s=5.0, burst=5.0))
    assert 5.0 == refill(0.5, 60.0, rate_per_s=5.0, burst=5.0)
    assert 0.5 == refill(0.5, -1.0, rate_per_s=5.0, burst=5.0)
    assert 100.4 == pytest.approx(ready_at(0.0, 100.0, need=2.0, rate_per_s=5.0))
    assert 100.0 == ready_at(2.0, 100.0, need=2.0, rate_per_s=5.0)
    assert 5.0 == per_second("300/min") == per_second("18000/h")


async def test_a_bucket_refills_at_its_rate(make_store: StoreFactory) -> None:
    """300/min, burst 5, emptied: half a second later 2.5 tokens, so 2 go and the third is
    not before 0.6 s (the half token missing at 5/s)."""
    clock = Clock()
    s = pace_settings(relay={"rate": "300/min", "burst": 5}, critical_share=0)
    pace = Pace(s, make_store(clock), clock=clock)

    assert 5 == await admit_all(pace, 6, Priority.NORMAL)
    clock.now = START + 0.5
    assert 2 == await admit_all(pace, 2, Priority.NORMAL)
    third = await pace.admit("example.com", Priority.NORMAL)

    assert third.not_before == pytest.approx(START + 0.6)
    assert third.wait_s == pytest.approx(0.1)


async def test_a_domain_has_its_own_bucket_and_a_deferral_takes_nothing(
    make_store: StoreFactory,
) -> None:
    """gmail.com 1 at a time (any case of its name); the gmail mail held back takes no relay
    token, so other domains get the relay's remaining 2."""
    clock = Clock()
    s = pace_settings(
        relay={"rate": "1/min", "burst": 3},
        domains={"gmail.com": {"rate": "1/s", "burst": 1}},
        critical_share=0,
    )
    pace = Pace(s, make_store(clock), clock=clock)

    first = await pace.admit("gmail.com", Priority.NORMAL)
    second = await pace.admit("Gmail.COM", Priority.NORMAL)
    others = await admit_all(pace, 2, Priority.NORMAL, "yahoo.com")
    last = await pace.admit("yahoo.com", Priority.NORMAL)

    assert (True, 2) == (first.go, others)
    assert (False, START + 1, "domain") == (second.go, second.not_before, second.limit)
    assert (False, "relay") == (last.go, last.limit)


async def test_without_limits_every_mail_goes() -> None:
    """No relay rate, no domains, no ramp: go, and the store is never asked."""
    pace = Pace(PaceSettings(), MemoryPaceStore(lambda: pytest.fail("store asked")))

    assert 100 == await admit_all(pace, 100, Priority.LOW)


async def test_metrics_count_admitted_by_share_and_deferred_by_limit() -> None:
    """herald_pace_admitted_total{share}, herald_pace_deferred_total{limit}."""
    registry = CollectorRegistry()
    clock = Clock()
    s = pace_settings(relay={"rate": "1/min", "burst": 5}, critical_share=0.2)
    pace = Pace(s, MemoryPaceStore(clock), clock=clock, metrics=PaceMetrics(registry))

    await admit_all(pace, 6, Priority.LOW)
    await admit_all(pace, 1, Priority.CRITICAL)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert 4.0 == value("herald_pace_admitted_total", share="bulk")
    assert 1.0 == value("herald_pace_admitted_total", share="reserved")
    assert 2.0 == value("herald_pace_deferred_total", limit="relay")


# Settings: a refusal names the problem and the fix.


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"relay": {"rate": "fast"}}, 'write it like "300/min"'),
        ({"relay": {"rate": "0/s"}}, "give a positive rate"),
        ({"domains": {"Gmail.com": {"rate": "1/s"}}}, 'e.g. "gmail.com"'),
        ({"warmup": [{"day": 0, "per_hour": 20}]}, "HERALD_PACE__WARMUP_START"),
        ({"warmup": [{"day": 1, "per_hour": 20}], "warmup_start": "2026-12-01"}, "day 0"),
        (
            {
                "warmup": [{"day": 0, "per_hour": 2}, {"day": 0, "per_hour": 3}],
                "warmup_start": "2026-12-01",
            },
            "each day once",
        ),
        ({"warmup": [{"day": 0}], "warmup_start": "2026-12-01"}, "per_hour, per_day"),
        ({"warmup_time_zone": "Mars/Olympus"}, "IANA name"),
        ({"critical_share": 1.0}, "less than 1"),
    ],
)
def test_settings_refuse_what_cannot_work(values: dict[str, object], says: str) -> None:
    """Each refusal names its key and says how to fix it (the fix `load_settings` puts in
    the ConfigError once the group is in `Settings`)."""
    with pytest.raises(ValidationError) as caught:
        PaceSettings.model_validate(values)

    error = caught.value.errors()[0]
    refused = error.get("ctx", {}).get("error")
    fix = refused.fix if isinstance(refused, _Refused) else error["msg"]
    assert says in fix
    assert error["loc"] == () or error["loc"][0] in values


# The embedded store, over any traffic.


@settings(max_examples=150, deadline=None)
@given(
    rate_per_s=st.floats(min_value=0.1, max_value=100),
    burst=st.integers(min_value=1, max_value=20),
    share=st.sampled_from([0.0, 0.2, 0.5]),
    asks=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=2),
            st.sampled_from([Priority.CRITICAL, Priority.LOW]),
            st.booleans(),
        ),
        max_size=80,
    ),
)
def test_never_more_than_burst_plus_rate_times_elapsed(
    rate_per_s: float,
    burst: int,
    share: float,
    asks: list[tuple[float, Priority, bool]],
) -> None:
    """In any window [t_i, t_j] of admissions, at most burst + rate x (t_j - t_i) went (less
    the EPSILON of a token the store forgives rounding); and a caller back at its not-before
    moment is admitted."""
    clock = Clock()
    s = pace_settings(relay={"rate": f"{rate_per_s!r}/s", "burst": burst}, critical_share=share)
    pace = Pace(s, MemoryPaceStore(clock), clock=clock)
    went: list[float] = []

    async def run() -> None:
        for gap_s, priority, honour in asks:
            clock.now += gap_s
            a = await pace.admit("example.com", priority)
            if not a.go and honour:
                assert a.not_before is not None
                assert a.not_before > clock.now
                clock.now = a.not_before
                a = await pace.admit("example.com", priority)
                assert a.go
            if a.go:
                went.append(clock.now)

    asyncio.run(run())
    for i, t_i in enumerate(went):
        for j in range(i, len(went)):
            allowed = math.floor(burst + rate_per_s * (went[j] - t_i) + EPSILON)
            assert j - i + 1 <= allowed
