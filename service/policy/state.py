"""What the policy stage reads and counts: the tables, the caps, the address key, the rules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from service.errors import ConfigError
from service.policy.pace import Pace
from service.routing import Category, CategoryRule
from service.settings import Settings
from service.stores.caps import CapStore
from service.stores.tables import PolicyTables


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyState:
    """The stores the rules read and count in, the address key and the category rules."""

    tables: PolicyTables
    caps: CapStore
    address_key: bytes
    categories: Mapping[Category, CategoryRule]
    pace: Pace
    hold_s: float
    """Pace's waits up to this long are waited out here; longer ones are deferred."""
    healthy: Callable[[], bool] = lambda: True
    """False once a table stopped following its topic."""


def address_key(settings: Settings) -> bytes:
    """The key of address digests; a ConfigError naming the fix when it is not set."""
    key = settings.policy.address_key
    if key is None:
        raise ConfigError(
            "environment",
            "HERALD_POLICY__ADDRESS_KEY",
            "suppressions are stored under a keyed digest of the address, and no key is set",
            "set HERALD_POLICY__ADDRESS_KEY to a random key of 32 characters or more "
            "(`openssl rand -hex 32`) and keep it: a new key orphans stored suppressions",
        )
    return key.get_secret_value().encode()
