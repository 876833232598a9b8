"""What a record may hold before any work that grows faster than its size: the limits on its
strings and arrays, and the recipient's locale and time zone, checked once, at decode.

A string or array over its limit refuses the record (`too_large`, dead-lettered: raise the
limit and redrive it). A locale that is not a BCP 47 tag of 35 characters at most, or a zone
that is not an IANA name, is replaced by the default and the replacement noted: they only
decide how the mail reads, and a password reset must go out anyway.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from zoneinfo import available_timezones

from service.errors import RecordOverBudget

LOCALE_MAX_CHARS = 35
"""RFC 5646 4.4.1: a tag of 35 characters covers every registered language and region."""
_BCP47 = re.compile(
    r"[A-Za-z]{2,3}"  # language
    r"(?:-[A-Za-z]{3}){0,3}"  # extended language subtags
    r"(?:-[A-Za-z]{4})?"  # script
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"  # region
    r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"  # variants
    r"(?:-[0-9A-WY-Za-wy-z](?:-[A-Za-z0-9]{2,8})+)*"  # extensions
    r"(?:-[xX](?:-[A-Za-z0-9]{1,8})+)?"  # private use
)
ZONE_MAX_CHARS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds on what one record may hold."""

    max_string_chars: int
    """Any string of the event, recipient fields included."""
    max_array_items: int
    """Any array (or map) of the payload: templates loop over them."""


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def locale_tag(value: object) -> str | None:
    """`value` as a BCP 47 tag (`_` read as `-`), or None if it is not one."""
    if not isinstance(value, str) or not value or len(value) > LOCALE_MAX_CHARS:
        return None
    tag = value.strip().replace("_", "-")
    return tag if _BCP47.fullmatch(tag) else None


def zone_name(value: object) -> str | None:
    """`value` if it names an IANA time zone this machine knows, else None."""
    if not isinstance(value, str) or len(value) > ZONE_MAX_CHARS:
        return None
    return value if value in _zones() else None


def audience(
    locale: object, time_zone: object, default_locale: str, default_zone: str
) -> tuple[str, str, tuple[str, ...]]:
    """The locale and zone to use for a recipient, and a note for each default put in place
    of a value that was given but unusable."""
    notes = []
    tag = locale_tag(locale)
    if tag is None:
        if locale:
            notes.append(f"locale {_shown(locale)} is not a BCP 47 tag: {default_locale} used")
        tag = default_locale
    zone = zone_name(time_zone)
    if zone is None:
        if time_zone:
            notes.append(f"time zone {_shown(time_zone)} is not an IANA name: {default_zone} used")
        zone = default_zone
    return tag, zone, tuple(notes)


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "…"


def check(record: Mapping[str, Any], limits: Limits) -> None:
    """RecordOverBudget naming the first string or array over its limit."""
    stack: list[tuple[str, Any]] = [("", record)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if len(value) > limits.max_string_chars:
                raise RecordOverBudget(
                    f"{path or 'value'} has {len(value):,} characters, over "
                    f"processing.max_string_chars ({limits.max_string_chars:,})"
                )
        elif isinstance(value, Mapping):
            _count(path, len(value), limits)
            stack.extend((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            _count(path, len(value), limits)
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))


def _count(path: str, items: int, limits: Limits) -> None:
    if items > limits.max_array_items and path:
        raise RecordOverBudget(
            f"{path} has {items:,} items, over processing.max_array_items "
            f"({limits.max_array_items:,})"
        )
