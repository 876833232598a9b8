"""Pace shared through a real redis-server: instances with clients of their own draw on one
bucket, timed by the server's clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from service.errors import StoreUnavailable
from service.policy.pace import Admission, Pace
from service.routing import Priority
from service.settings.pace import PaceSettings
from service.stores.pace import EPSILON, MemoryPaceStore, RedisPaceStore, open_pace_store
from service.testing import free_port
from tests.pacing import START, Clock, StoreFactory, pace_settings, stores


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator[StoreFactory]:
    async with stores("redis", redis_url) as make:
        yield make


async def server_time(redis_url: str) -> float:
    """The Redis server's clock, which times the buckets."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        seconds, micros = await client.time()
    finally:
        await client.aclose()
    return seconds + micros / 1_000_000


async def test_two_instances_share_one_bucket(make_store: StoreFactory) -> None:
    """30 bulk admits at once from two instances on a bucket of 10 with 20% reserved: exactly
    8 go, 22 are told to wait for the next token (a day, at 1/day), and the 2 reserved are
    still there for critical mail from either instance."""
    s = pace_settings(relay={"rate": "1/day", "burst": 10}, critical_share=0.2)
    a, b = Pace(s, make_store(None)), Pace(s, make_store(None))

    answers = await asyncio.gather(
        *(p.admit("example.com", Priority.NORMAL) for _ in range(15) for p in (a, b))
    )
    critical = [await p.admit("example.com", Priority.CRITICAL) for p in (a, b, a)]

    deferred = [x for x in answers if not x.go]
    assert 8 == sum(x.go for x in answers)
    assert 22 == len(deferred)
    assert {"relay"} == {x.limit for x in deferred}
    assert all(x.wait_s == pytest.approx(86_400, abs=60) for x in deferred)
    assert [True, True, False] == [x.go for x in critical]


async def test_two_instances_share_the_ramps_counters(make_store: StoreFactory) -> None:
    """10 an hour on the ramp, 20 admits from two instances: 10 go, the rest wait for the
    next hour. The instances' clocks say 1 December, the server's is later: the window they
    name still holds, and its wait is counted on their clock."""
    clock = Clock(START + 3600)
    s = pace_settings(
        warmup=[{"day": 0, "per_hour": 10}], warmup_start="2026-12-01", critical_share=0
    )
    a = Pace(s, make_store(None), clock=clock)
    b = Pace(s, make_store(None), clock=clock)

    answers = await asyncio.gather(
        *(p.admit("example.com", Priority.NORMAL) for _ in range(10) for p in (a, b))
    )

    assert 10 == sum(x.go for x in answers)
    assert {(START + 7200, 3600.0)} == {(x.not_before, x.wait_s) for x in answers if not x.go}


async def simulate(
    instances: list[Pace], clock: Clock, seconds: float, critical_every_s: float | None = None
) -> tuple[int, list[Admission]]:
    """Each instance asks as soon as it may, honouring its not-before, for `seconds` of
    simulated time; a critical mail every `critical_every_s`. Returns the bulk mails that went
    and the answers the critical ones got at first asking."""
    end = clock.now + seconds
    next_ask = [clock.now] * len(instances)
    next_critical = clock.now if critical_every_s else end + 1
    bulk, critical = 0, []
    while True:
        i = min(range(len(instances)), key=next_ask.__getitem__)
        if next_critical <= next_ask[i] and next_critical <= end:
            clock.now = next_critical
            critical.append(await instances[i].admit("example.com", Priority.CRITICAL))
            next_critical += critical_every_s or 0
            continue
        if next_ask[i] > end:
            return bulk, critical
        clock.now = next_ask[i]
        answer = await instances[i].admit("example.com", Priority.LOW)
        if answer.go:
            bulk += 1
        else:
            assert answer.not_before is not None
            next_ask[i] = answer.not_before


async def test_two_minutes_at_300_a_minute_through_redis(make_store: StoreFactory) -> None:
    """Two instances asking as fast as pace lets them, for two simulated minutes, through the
    Redis script: 4 at once (a burst of 5 less 1 reserved), then 5 a second: 604, within the
    bucket's bound of 5 + 5 x 120."""
    clock = Clock()
    s = pace_settings(relay={"rate": "300/min", "burst": 5}, critical_share=0.2)
    instances = [Pace(s, make_store(clock), clock=clock) for _ in range(2)]

    went, _ = await simulate(instances, clock, 120.0)

    assert went <= 5 + 5 * 120
    assert 604 == went


async def test_bulk_at_full_rate_never_holds_critical_mail_back(make_store: StoreFactory) -> None:
    """Two instances of bulk at 300/min for two simulated minutes, and a critical mail every
    second: every critical mail goes at once; bulk gets the rest of the rate."""
    clock = Clock()
    s = pace_settings(relay={"rate": "300/min", "burst": 5}, critical_share=0.2)
    instances = [Pace(s, make_store(clock), clock=clock) for _ in range(2)]

    bulk, critical = await simulate(instances, clock, 120.0, critical_every_s=1.0)

    assert 121 == len(critical)
    assert all(x.go for x in critical)
    assert bulk + len(critical) <= 5 + 5 * 120


async def test_six_seconds_of_real_time_stay_within_the_bound(
    make_store: StoreFactory, redis_url: str
) -> None:
    """Four workers on two instances, 300/min and a burst of 5, timed by Redis's clock for
    about six seconds: no more went than 5 + 5 x the seconds that passed on the server."""
    s = pace_settings(relay={"rate": "300/min", "burst": 5}, critical_share=0.2)
    instances = [Pace(s, make_store(None)) for _ in range(2)]
    went = 0
    began = await server_time(redis_url)

    async def worker(pace: Pace) -> None:
        nonlocal went
        deadline = time.monotonic() + 6  # how long to run, not what to assert
        while time.monotonic() < deadline:
            answer = await pace.admit("example.com", Priority.NORMAL)
            if answer.go:
                went += 1
            else:
                await asyncio.sleep(answer.wait_s)

    await asyncio.gather(*(worker(p) for p in instances * 2))
    elapsed = await server_time(redis_url) - began

    assert 0 < went <= 5 + 5 * elapsed + EPSILON


async def test_redis_out_of_reach_is_store_unavailable() -> None:
    """Nothing listening: StoreUnavailable, which the flow waits out and asks again."""
    s = pace_settings(relay={"rate": "1/s"})
    async with RedisPaceStore(f"redis://127.0.0.1:{free_port()}/0") as store:
        pace = Pace(s, store)
        with pytest.raises(StoreUnavailable):
            await pace.admit("example.com", Priority.NORMAL)


async def test_the_backend_is_chosen_by_the_setting(redis_url: str) -> None:
    """`memory` is this process's store; `redis` a client of the shared one."""
    async with open_pace_store(PaceSettings(), redis_url=redis_url) as memory:
        assert isinstance(memory, MemoryPaceStore)
    async with open_pace_store(PaceSettings(backend="redis"), redis_url=redis_url) as shared:
        assert isinstance(shared, RedisPaceStore)
