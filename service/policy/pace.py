"""Outbound pace: may a mail leave now, or not before when, under the relay's rate, its
domain's rate and the warm-up ramp (docs/pace.md).

Pace never drops a mail: `admit` answers "go" (one token taken from every limit) or "not
before T" (the earliest moment the scarcest limit frees one), and the caller defers the mail
to then. Mail of `reserved_from` priority or above may use a bucket to the bottom; bulk must
leave `critical_share` of it, so bulk can never starve critical mail.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter

from service.routing import Priority
from service.settings.pace import PaceSettings, RampStep
from service.stores.pace import BucketLimit, PaceStore, WindowLimit


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    """Pace's answer for one mail."""

    go: bool
    """A token was taken from every limit: send it now."""
    not_before: float | None = None
    """When not `go`: the earliest moment (epoch seconds) to ask again."""
    wait_s: float = 0.0
    """`not_before` less the store's clock when it decided: for a caller whose clock differs
    from the Redis server's, its own now + `wait_s` is the moment to ask again."""
    limit: str | None = None
    """When not `go`: the limit that held it back longest (`relay`, `domain`, `warmup_hour`,
    `warmup_day`)."""


GO = Admission(go=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class WarmupLimit:
    """The ramp's limits at a moment, and the windows they count in."""

    day: int
    """Days since the ramp's start, in its time zone (0 on the start date)."""
    per_hour: int | None
    per_day: int | None
    hour: datetime
    """Start of the hour window, in the ramp's zone."""
    hour_ends: datetime
    local_date: date
    day_ends: datetime
    """The next midnight in the ramp's zone."""


def warmup_limit(
    at: datetime, *, steps: Sequence[RampStep], start: date, zone: ZoneInfo
) -> WarmupLimit | None:
    """The ramp's limits at `at` (an aware datetime); None once the ramp is over.

    A step holds from its day until the next step's day; the last step holds for its own day,
    and from the next day on there is no ramp. Before the start date, day 0 holds.
    """
    local = at.astimezone(zone)
    day = (local.date() - start).days
    if not steps or day > steps[-1].day:
        return None
    step = next(s for s in reversed(steps) if s.day <= max(day, 0))
    # Hour windows start at the zone's full hours and end an hour of real time later; keyed
    # by their UTC start, the hour a DST change repeats is two windows, not one.
    hour = local.replace(minute=0, second=0, microsecond=0)
    hour_ends = (hour.astimezone(UTC) + timedelta(hours=1)).astimezone(zone)
    midnight = datetime.combine(local.date() + timedelta(days=1), clock_time(0), tzinfo=zone)
    return WarmupLimit(
        day=day,
        per_hour=step.per_hour,
        per_day=step.per_day,
        hour=hour,
        hour_ends=hour_ends,
        local_date=local.date(),
        day_ends=midnight,
    )


class PaceMetrics:
    """Pace's counters; `service.metrics.Metrics` may own them instead (docs/pace.md)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.admitted = Counter(
            "herald_pace_admitted",
            "Mails pace let go, by share: reserved (critical) or bulk.",
            ["share"],
            registry=registry,
        )
        self.deferred = Counter(
            "herald_pace_deferred",
            "Mails pace held back to a later moment, by the limit that held them longest.",
            ["limit"],
            registry=registry,
        )


class Pace:
    """Admits mails under the configured limits, in a store shared or not."""

    def __init__(
        self,
        settings: PaceSettings,
        store: PaceStore,
        *,
        clock: Callable[[], float] = time.time,
        metrics: PaceMetrics | None = None,
    ) -> None:
        """`clock`: the wall clock that picks the warm-up ramp's day and hour (buckets are
        timed by the store: the Redis server's clock, for Redis)."""
        self._settings = settings
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._reserved_from = Priority(settings.reserved_from)
        self._prefix = "{" + settings.redis_prefix + "}"
        share = settings.critical_share
        self._relay = (
            None
            if settings.relay is None
            else BucketLimit(
                key=f"{self._prefix}:relay",
                rate_per_s=settings.relay.per_s,
                burst=float(settings.relay.burst),
                reserve=share * settings.relay.burst,
            )
        )
        self._domains = {
            name: BucketLimit(
                key=f"{self._prefix}:domain:{name}",
                rate_per_s=b.per_s,
                burst=float(b.burst),
                reserve=share * b.burst,
            )
            for name, b in settings.domains.items()
        }

    def domain_limited(self, domain: str) -> bool:
        """Whether the domain has a bucket of its own."""
        return domain.lower().rstrip(".") in self._domains

    def reserved(self, priority: Priority) -> bool:
        """Whether mail of this priority may use the reserved share."""
        return priority.at_least(self._reserved_from)

    async def admit(self, domain: str, priority: Priority) -> Admission:
        """Go now (a token taken), or not before when; StoreUnavailable while the store is
        out of reach (nothing is taken then, so asking again is safe)."""
        buckets, names = [], []
        if self._relay is not None:
            buckets.append(self._relay)
            names.append("relay")
        if (bucket := self._domains.get(domain.lower().rstrip("."))) is not None:
            buckets.append(bucket)
            names.append("domain")
        windows = self._warmup_windows()
        names += [name for name, _ in windows]
        reserved = self.reserved(priority)
        if not buckets and not windows:
            self._count_admitted(reserved)
            return GO
        taken = await self._store.take(buckets, [w for _, w in windows], reserved=reserved)
        if taken.go:
            self._count_admitted(reserved)
            return GO
        assert taken.not_before is not None
        assert taken.blocking is not None
        limit = names[taken.blocking]
        if self._metrics is not None:
            self._metrics.deferred.labels(limit=limit).inc()
        # A bucket's moment is on the store's clock; a ramp window's end on this one's.
        now = self._clock() if limit.startswith("warmup") else taken.now
        return Admission(
            go=False,
            not_before=taken.not_before,
            wait_s=max(0.0, taken.not_before - now),
            limit=limit,
        )

    def _count_admitted(self, reserved: bool) -> None:
        if self._metrics is not None:
            self._metrics.admitted.labels(share="reserved" if reserved else "bulk").inc()

    def _warmup_windows(self) -> list[tuple[str, WindowLimit]]:
        """The ramp's hour and day counters now, by the wall clock in the ramp's zone."""
        s = self._settings
        if not s.warmup or s.warmup_start is None:
            return []
        ramp = warmup_limit(
            datetime.fromtimestamp(self._clock(), UTC),
            steps=s.warmup,
            start=s.warmup_start,
            zone=s.zone,
        )
        if ramp is None:
            return []
        windows = []
        if ramp.per_hour is not None:
            hour = ramp.hour.astimezone(UTC).strftime("%Y-%m-%dT%H%z")
            windows.append(
                ("warmup_hour", self._window("hour", hour, ramp.per_hour, ramp.hour_ends))
            )
        if ramp.per_day is not None:
            day = ramp.local_date.isoformat()
            windows.append(("warmup_day", self._window("day", day, ramp.per_day, ramp.day_ends)))
        return windows

    def _window(self, kind: str, stamp: str, limit: int, ends: datetime) -> WindowLimit:
        return WindowLimit(
            key=f"{self._prefix}:warmup:{kind}:{stamp}",
            limit=limit,
            reserve=math.floor(self._settings.critical_share * limit),
            ends=ends.timestamp(),
        )
