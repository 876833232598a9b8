"""The rules a notification must pass before it is rendered, in order, and the claim."""

from __future__ import annotations

from service.outcomes.status import Status
from service.policy.decision import GO, Decision, never
from service.routing import Notification
from service.stores.idempotency import IdempotencyStore, State


class Policy:
    """One answer per notification: go now, or never and why."""

    def __init__(self, store: IdempotencyStore) -> None:
        self._store = store

    async def decide(self, n: Notification) -> Decision:
        """The route's condition, then the idempotency claim; StoreUnavailable while the
        store is out of reach (nothing is claimed then, so asking again is safe)."""
        if not n.condition_met:
            return never(Status.SUPPRESSED, "condition_false")
        return await self._claim(n)

    async def _claim(self, n: Notification) -> Decision:
        """Reserve the notification for this try unless an earlier one got further."""
        prior = await self._store.claim(n.idempotency_key)
        if prior.state is State.ACCEPTED:
            return never(
                Status.DEDUPLICATED,
                "already_accepted",
                message_id=prior.message_id,
                smtp_code=prior.smtp_code,
            )
        if prior.state is State.IN_DATA:
            # An earlier try died between handing over the body and the reply (RFC 1047).
            return never(Status.UNKNOWN, "reply_lost")
        return GO
