"""Consent choices: one record per user and scope on the compacted preferences topic."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.stores.codec import StateCodec, composite_key, split_key

PREFERENCE_SCHEMA = "herald.policy.Preference"
ALL = "all"
"""The scope of "no optional mail at all"."""
_SCOPE = re.compile(r"all|category:[a-z][a-z0-9_]*|type:[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


def category_scope(category: str) -> str:
    return f"category:{category}"


def type_scope(notification_type: str) -> str:
    return f"type:{notification_type}"


def valid_scope(scope: str) -> bool:
    return _SCOPE.fullmatch(scope) is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Preference:
    """A user's choice for one scope: subscribed (opted in) or not (opted out)."""

    user_id: str
    scope: str
    subscribed: bool
    updated_at: datetime
    source: str

    @property
    def key(self) -> bytes:
        return preference_key(self.user_id, self.scope)


def preference_key(user_id: str, scope: str) -> bytes:
    """`<user id>␟<scope>`: compaction keeps one choice per user and scope."""
    if not valid_scope(scope):
        raise ValueError(f"not a preference scope: {scope!r}")
    return composite_key(user_id, scope)


def split_preference_key(key: bytes) -> tuple[str, str]:
    user_id, scope = split_key(key, 2)
    return user_id, scope


class PreferenceCodec:
    """Preference values of the preferences topic."""

    def __init__(self, codec: StateCodec) -> None:
        self._codec = codec

    def encode(self, p: Preference) -> bytes:
        return self._codec.encode(
            {
                "user_id": p.user_id,
                "scope": p.scope,
                "subscribed": p.subscribed,
                "updated_at": p.updated_at,
                "source": p.source,
            }
        )

    def decode(self, value: bytes) -> Preference:
        """ValueError for a value that is not a preference, or has a scope Herald cannot read."""
        r: dict[str, Any] = self._codec.decode(value)
        if not valid_scope(r["scope"]):
            raise ValueError(f"not a preference scope: {r['scope']!r}")
        return Preference(
            user_id=r["user_id"],
            scope=r["scope"],
            subscribed=r["subscribed"],
            updated_at=r["updated_at"],
            source=r["source"],
        )
