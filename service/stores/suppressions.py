"""Suppressed addresses: one record per address digest and scope on the compacted topic.

The address is never stored: records carry an HMAC-SHA-256 of the lower-cased address under
`policy.address_key` (so a listing cannot be reversed by hashing a list of addresses without
the key) and a masked hint for people.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from service.stores.codec import StateCodec, composite_key, split_key

SUPPRESSION_SCHEMA = "herald.policy.Suppression"


class Scope(StrEnum):
    ALL = "ALL"
    """Every mail: the address does not take mail (hard bounce, manual)."""
    OPTIONAL = "OPTIONAL"
    """Optional and commercial mail: the person asked for no more (complaint)."""


def address_digest(address: str, key: bytes) -> str:
    """Hex HMAC-SHA-256 of the lower-cased, trimmed address."""
    return hmac.new(key, address.strip().lower().encode(), hashlib.sha256).hexdigest()


def address_hint(address: str) -> str:
    """`jane@example.com` → `j***@example.com`."""
    local, _, domain = address.strip().rpartition("@")
    return f"{local[0]}***@{domain.lower()}" if local else "***"


@dataclass(frozen=True, slots=True, kw_only=True)
class Suppression:
    """Why, since when and until when an address is not mailed."""

    address_digest: str
    address_hint: str
    scope: Scope
    reason: str
    source: str
    created_at: datetime
    expires_at: datetime | None = None
    detail: str | None = None

    @property
    def key(self) -> bytes:
        return suppression_key(self.address_digest, self.scope)

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at


def suppression_key(digest: str, scope: Scope) -> bytes:
    return composite_key(digest, scope.value)


def split_suppression_key(key: bytes) -> tuple[str, Scope]:
    digest, scope = split_key(key, 2)
    return digest, Scope(scope)


class SuppressionCodec:
    """Suppression values of the suppressions topic."""

    def __init__(self, codec: StateCodec) -> None:
        self._codec = codec

    def encode(self, s: Suppression) -> bytes:
        return self._codec.encode(
            {
                "address_digest": s.address_digest,
                "address_hint": s.address_hint,
                "scope": s.scope.value,
                "reason": s.reason,
                "source": s.source,
                "detail": s.detail,
                "created_at": s.created_at,
                "expires_at": s.expires_at,
            }
        )

    def decode(self, value: bytes) -> Suppression:
        r: dict[str, Any] = self._codec.decode(value)
        return Suppression(
            address_digest=r["address_digest"],
            address_hint=r["address_hint"],
            scope=Scope(r["scope"]),
            reason=r["reason"],
            source=r["source"],
            detail=r["detail"],
            created_at=r["created_at"],
            expires_at=r["expires_at"],
        )
