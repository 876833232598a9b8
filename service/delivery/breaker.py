"""The SMTP circuit breaker: a relay that fails as a whole is left alone for a while."""

from __future__ import annotations

import asyncio
import time


class CircuitBreaker:
    """Opens after `threshold` consecutive server-wide failures; after `cooldown_s` lets one
    probe through (half-open), which closes it on success or reopens it on failure."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.last_error = ""
        """The failure that last counted against the server, for the error message."""

    @property
    def is_open(self) -> bool:
        """True while sending is refused, cool-down included; consumption pauses meanwhile."""
        return self._opened_at is not None

    def _ready(self) -> bool:
        if self._opened_at is None:
            return True
        return time.monotonic() - self._opened_at >= self._cooldown_s and not self._probing

    def allow(self) -> bool:
        """May a send go now? In half-open state only the first caller gets the probe."""
        if self._opened_at is None:
            return True
        if not self._ready():
            return False
        self._probing = True
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> bool:
        """Count a server-wide failure; True if this opened the breaker."""
        self._failures += 1
        was_open = self._opened_at is not None
        if self._probing or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            self._probing = False
            return not was_open
        return False

    async def wait(self) -> None:
        """Until a send may be tried again (it may still lose the probe to another caller)."""
        # The condition is time itself (and a probe's fate), so a short poll is the simplest.
        while not self._ready():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
