"""Settings of outbound pace: the relay's rate, per-domain rates and a warm-up ramp."""

from __future__ import annotations

import re
from datetime import date
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.settings.groups import _Refused

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|min|minute|h|hour|d|day)\s*$")
_PER_S = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_PER_S |= {"d": 86_400, "day": 86_400}


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def per_second(rate: str) -> float:
    """`"300/min"` → 5.0; the units are s, min, h and day."""
    m = _RATE.match(rate)
    if m is None:
        raise ValueError(rate)
    return float(m.group(1)) / _PER_S[m.group(2)]


class Bucket(_Group):
    """A token bucket: `rate` tokens a time unit, at most `burst` saved up."""

    rate: str
    """How many mails a time unit, e.g. `300/min`, `20/s`, `1000/h`."""
    burst: int = Field(default=1, ge=1)
    """Mails that may leave at once after a quiet spell; also the bucket's size."""

    @field_validator("rate")
    @classmethod
    def _rate(cls, value: str) -> str:
        try:
            per_s = per_second(value)
        except ValueError:
            raise _Refused(
                f"rate {value!r} does not read as <number>/<unit>",
                'write it like "300/min", "20/s" or "1000/h" (units: s, min, h, day)',
            ) from None
        if per_s <= 0:
            raise _Refused(f"rate {value!r} is zero", "give a positive rate, or drop the limit")
        return value

    @property
    def per_s(self) -> float:
        return per_second(self.rate)


class RampStep(_Group):
    """From `day` (0 = the start date) until the next step: at most so many mails an hour and
    a day."""

    day: int = Field(ge=0)
    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _some_limit(self) -> RampStep:
        if self.per_hour is None and self.per_day is None:
            raise _Refused(
                f"warm-up step of day {self.day} limits nothing",
                "give it per_hour, per_day or both",
            )
        return self


SENDGRID_RAMP: tuple[RampStep, ...] = tuple(
    RampStep(day=d, per_hour=h)
    for d, h in [
        (0, 20), (2, 39), (5, 108), (8, 295), (12, 1_000),
        (16, 4_356), (20, 16_734), (25, 89_998), (30, 484_029),
    ]
)  # fmt: skip
"""SendGrid's automated IP warm-up, hourly caps (about 1.4 times a day); docs/pace.md cites it."""


class PaceSettings(_Group):
    backend: Literal["memory", "redis"] = "memory"
    """`memory`: this instance's own buckets, lost on restart. `redis`: shared by every
    instance, at `idempotency.redis_url`."""
    relay: Bucket | None = None
    """The relay's rate, e.g. `{"rate": "300/min", "burst": 20}`; none: unlimited."""
    domains: dict[str, Bucket] = Field(default_factory=dict)
    """Rates per recipient domain, e.g. `{"gmail.com": {"rate": "20/s", "burst": 20}}`."""
    warmup: list[RampStep] = Field(default_factory=list)
    """The warm-up ramp of a new sending domain or IP, steps by day; empty: no ramp."""
    warmup_start: date | None = None
    """Day 0 of the ramp, in `warmup_time_zone`; required with a ramp."""
    warmup_time_zone: str = "UTC"
    """Where the ramp's days and hours begin (an IANA zone, e.g. `America/New_York`)."""
    critical_share: float = Field(default=0.2, ge=0.0, lt=1.0)
    """The part of every limit that only reserved mail may use; bulk gets the rest."""
    reserved_from: Literal["critical", "high", "normal", "low"] = "critical"
    """Mail of this priority or above draws on the reserved share (and on the rest)."""
    hold_s: float = Field(default=10.0, ge=0.0)
    """A mail held back for up to this long waits in the process (its partition keeps its
    order); one held back longer goes through the retry topics, due when pace frees it."""
    redis_prefix: str = Field(default="herald:pace", pattern=r"^[A-Za-z0-9:._-]+$")
    """Keys are `{<prefix>}:…`; one hash slot, so a Redis Cluster runs each check at once."""

    @field_validator("domains")
    @classmethod
    def _lower_case(cls, value: dict[str, Bucket]) -> dict[str, Bucket]:
        for name in value:
            if name != name.lower().strip() or not name or "@" in name:
                raise _Refused(
                    f"domain {name!r} is not a lower-case domain name",
                    'key the map by the bare domain, e.g. "gmail.com"',
                )
        return value

    @field_validator("warmup_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise _Refused(
                f"{value!r} is not a time zone",
                'give an IANA name such as "UTC" or "Europe/Paris"',
            ) from None
        return value

    @field_validator("warmup")
    @classmethod
    def _steps(cls, value: list[RampStep]) -> list[RampStep]:
        days = [s.day for s in value]
        if value and days[0] != 0:
            raise _Refused(f"the warm-up ramp begins on day {days[0]}", "make its first step day 0")
        if days != sorted(set(days)):
            raise _Refused(
                f"the warm-up days {days} are not increasing", "list each day once, in order"
            )
        return value

    @model_validator(mode="after")
    def _start(self) -> PaceSettings:
        if self.warmup and self.warmup_start is None:
            raise _Refused(
                "a warm-up ramp without warmup_start",
                "set HERALD_PACE__WARMUP_START to day 0 of the ramp, e.g. 2026-12-01",
            )
        return self

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.warmup_time_zone)
