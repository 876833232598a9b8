"""The SMTP circuit breaker: a relay that fails as a whole is left alone for a while."""

from __future__ import annotations

import asyncio
import time
from enum import StrEnum


class BreakerState(StrEnum):
    """closed ─(threshold failures)─► open ─(cool-down, first caller)─► half_open ─(probe
    succeeds)─► closed; a failed probe opens it again, and any success closes it."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Opens after `threshold` consecutive server-wide failures; after `cooldown_s` lets one
    probe through (half-open), which closes it on success or reopens it on failure."""

    def __init__(self, threshold: int, cooldown_s: float) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._failures = 0
        self._opened_at = 0.0
        self.state = BreakerState.CLOSED
        self.last_error = ""
        """The failure that last counted against the server, for the error message."""

    @property
    def is_open(self) -> bool:
        """True while sending is refused, cool-down and probe included."""
        return self.state is not BreakerState.CLOSED

    def _cooled(self) -> bool:
        return time.monotonic() - self._opened_at >= self._cooldown_s

    def allow(self) -> bool:
        """May a send go now? After the cool-down only the first caller gets the probe."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN or not self._cooled():
            return False
        self.state = BreakerState.HALF_OPEN
        return True

    def succeeded(self) -> None:
        self._failures = 0
        self.state = BreakerState.CLOSED

    def failed(self, error: str) -> bool:
        """Count a server-wide failure; True if this opened the breaker."""
        self._failures += 1
        self.last_error = error
        was = self.state
        if was is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = time.monotonic()
            self.state = BreakerState.OPEN
            return was is BreakerState.CLOSED
        return False

    async def wait(self) -> None:
        """Until a send may be tried again (it may still lose the probe to another caller)."""
        # The condition is time itself (and a probe's fate), so a short poll is the simplest.
        while self.state is BreakerState.HALF_OPEN or (  # noqa: ASYNC110
            self.state is BreakerState.OPEN and not self._cooled()
        ):
            await asyncio.sleep(0.1)
