"""Reads an unsubscribe link back: the shape `links.unsubscribe_url` gives it, and its values.

The listener serves the path of the configured URL, whatever host it names (the public host
routes that path here), and finds each placeholder where the template put it: a whole query
value (`?user={user_id}`) or a path parameter (`/u/{user_id}/{token}`). Pure functions.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from service.errors import ConfigError

FIELDS = frozenset({"user_id", "notification", "category", "token"})
REQUIRED = frozenset({"user_id", "notification", "token"})
"""Without {category}, the category comes from the routing table, by notification type."""
MAX_VALUE = 512
"""Longest parameter value read: user ids and types are short, a token is 60 characters."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkShape:
    """Where the configured unsubscribe URL carries each field."""

    path: str
    """Starlette route path, with `{field}` path parameters where the template had them."""
    query: Mapping[str, str]
    """Query parameter name → field it carries."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkValues:
    """The fields of one requested link, as the recipient's client sent them."""

    user_id: str
    notification: str
    category: str | None
    """None when the link does not carry it."""
    token: str


def shape(template: str) -> LinkShape:
    """The shape of `links.unsubscribe_url`; ConfigError for one the listener cannot read."""
    parts = urlsplit(template)
    fields = [f for _, f, _, _ in string.Formatter().parse(parts.path) if f is not None]
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        parsed = [(lit, f) for lit, f, _, _ in string.Formatter().parse(value)]
        placeholders = [f for _, f in parsed if f is not None]
        if not placeholders:
            continue  # a fixed parameter: the listener does not need it
        if len(parsed) != 1 or parsed[0][0]:
            _refuse(template, f"query parameter {name!r} must be exactly one placeholder")
        query[name] = placeholders[0]
        fields.append(placeholders[0])
    if unknown := set(fields) - FIELDS:
        _refuse(template, f"unknown placeholder {{{sorted(unknown)[0]}}}")
    if len(fields) != len(set(fields)):
        _refuse(template, "a placeholder appears twice")
    if missing := REQUIRED - set(fields):
        _refuse(template, f"it lacks {{{sorted(missing)[0]}}}")
    return LinkShape(path=parts.path or "/", query=query)


def _refuse(template: str, why: str) -> None:
    raise ConfigError(
        "settings",
        "links.unsubscribe_url",
        f"the public listener cannot serve {template!r}: {why}",
        "put {user_id}, {notification} and {token} (and optionally {category}) each as a "
        "whole query value or path segment",
    )


def values(
    link: LinkShape, path_params: Mapping[str, str], query: Mapping[str, str]
) -> LinkValues | None:
    """The link's fields from a request; None if one is missing, empty or too long."""
    found = {f: v for f, v in path_params.items() if f in FIELDS}
    found.update({f: query[name] for name, f in link.query.items() if name in query})
    if any(not found.get(f) for f in REQUIRED):
        return None
    if any(len(v) > MAX_VALUE for v in found.values()):
        return None
    return LinkValues(
        user_id=found["user_id"],
        notification=found["notification"],
        category=found.get("category") or None,
        token=found["token"],
    )
