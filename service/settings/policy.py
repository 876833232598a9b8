"""Settings of the policy stage (consent, suppression, caps) and of the public listener."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

MIN_ADDRESS_KEY = 32


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PolicySettings(_Group):
    preferences_topic: str = "notification.preferences"
    """Compacted topic of consent choices, keyed by user id and scope; upstream may write it."""
    suppressions_topic: str = "notification.suppressions"
    """Compacted topic of suppressed addresses, keyed by address digest and scope."""
    feedback_topic: str = "mail.feedback"
    """Bounces, complaints and deliveries reported after the relay accepted a mail."""
    state_path: Path = Path("var/policy.sqlite3")
    """Local copy of the preference and suppression tables (and the embedded caps); rebuilt
    from the topics at start-up, so it may be lost."""
    address_key: SecretStr | None = None
    """Keys the digest suppressions are stored under (HMAC-SHA-256); required, and to be kept:
    a new key orphans every suppression stored under the old one."""
    caps_backend: Literal["sqlite", "redis"] = "sqlite"
    """`sqlite`: embedded, one instance. `redis`: shared by every instance, at
    `idempotency.redis_url`."""
    restore_timeout_s: float = Field(default=300.0, gt=0)
    """How long start-up waits for the tables to catch up with their topics before failing."""

    @field_validator("address_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_ADDRESS_KEY:
            raise ValueError(
                f"is shorter than {MIN_ADDRESS_KEY} characters: "
                "set it to a random key such as `openssl rand -hex 32` prints"
            )
        return value


class PublicSettings(_Group):
    host: str = "127.0.0.1"
    """Interface of the public listener (one-click unsubscribe, provider webhooks); `0.0.0.0`
    behind the ingress that terminates TLS."""
    port: int = Field(default=8080, ge=0, le=65535)
    """0 picks a free port (tests); the internal /metrics port stays separate."""
    enabled: bool = True
