"""Locale-aware filters for templates: money, numbers, percentages, countries, dates and times,
in the recipient's language and time zone (Babel, CLDR data).

A Babel format is costly and a receipt makes dozens (both parts show the same amounts and
dates), so results are cached per value, currency or zone, and locale.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import babel
import babel.dates
import babel.numbers


@lru_cache(maxsize=256)
def babel_locale(tag: str) -> babel.Locale | None:
    try:
        return babel.Locale.parse(tag.replace("-", "_"))
    except (ValueError, babel.UnknownLocaleError):
        return None


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


_audience: ContextVar[tuple[babel.Locale, ZoneInfo]] = ContextVar("herald_render_audience")
"""Locale and zone of the mail being rendered: a context variable rather than template
context, so filters behave the same inside imported macros, which see no caller context."""


@lru_cache(maxsize=8192)
def _money_text(amount_minor: int, currency: str, loc: babel.Locale) -> str:
    digits = babel.numbers.get_currency_precision(currency)
    amount = Decimal(amount_minor).scaleb(-digits)
    return babel.numbers.format_currency(amount, currency, locale=loc)


def _money(value: Mapping[str, Any]) -> str:
    return _money_text(value["amount_minor"], value["currency"], _audience.get()[0])


def _number(value: float | int) -> str:
    """1234.5 → "1,234.5" / "1 234,5"."""
    return babel.numbers.format_decimal(value, locale=_audience.get()[0])


def _percent(fraction: float) -> str:
    """A fraction, shown to one decimal at most: 0.1234 → "12.3%" / "12,3 %"."""
    return babel.numbers.format_percent(
        round(fraction, 3), locale=_audience.get()[0], decimal_quantization=False
    )


def _country(code: str) -> str:
    """ISO 3166 code → the country's name in the recipient's language."""
    return str(_audience.get()[0].territories.get(code.upper(), code))


@lru_cache(maxsize=8192)
def _moment_text(kind: str, value: datetime, fmt: str, loc: babel.Locale, zone: ZoneInfo) -> str:
    date = babel.dates.format_date(value.astimezone(zone), fmt, locale=loc)
    if kind == "date":
        return date
    # A time without its zone misleads whoever reads it elsewhere: always name the zone.
    time = babel.dates.format_time(value, "short", tzinfo=zone, locale=loc)
    time += " " + babel.dates.format_time(value, "z", tzinfo=zone, locale=loc)
    return time if kind == "time" else f"{date}, {time}"


def _dt_filter(kind: str) -> Any:
    def fmt(value: datetime, format: str = "medium") -> str:
        loc, zone = _audience.get()
        return _moment_text(kind, value, format, loc, zone)

    return fmt


_SAMPLE_TIME = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)


def load_formats(loc: babel.Locale) -> None:
    """Format a sample amount, number, percent and time in `loc` once. Babel reads a locale's
    CLDR data, and parses each pattern, on first use, which would otherwise land on the first
    receipt in that language after a deploy."""
    _money_text.__wrapped__(123456, "EUR", loc)
    babel.numbers.format_decimal(1234.5, locale=loc)
    babel.numbers.format_percent(0.125, locale=loc, decimal_quantization=False)
    _moment_text.__wrapped__("datetime", _SAMPLE_TIME, "medium", loc, zone("UTC"))


@contextmanager
def audience(locale: str, template_locale: str, time_zone: str) -> Iterator[None]:
    """Filters format for this recipient while the block renders: their locale (else the
    template's, else English) and their zone (else UTC)."""
    token = _audience.set(
        (
            babel_locale(locale) or babel_locale(template_locale) or babel.Locale("en"),
            zone(time_zone),
        )
    )
    try:
        yield
    finally:
        _audience.reset(token)


FILTERS: Mapping[str, Any] = {
    "money": _money,
    "datetime": _dt_filter("datetime"),
    "date": _dt_filter("date"),
    "time": _dt_filter("time"),
    "country": _country,
    "number": _number,
    "percent": _percent,
}
"""The locale-aware filters, by the name templates use."""
