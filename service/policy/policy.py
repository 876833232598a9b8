"""The rules a notification must pass before it is rendered, in order, and the claim."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

from service.metrics import Metrics
from service.outcomes.status import Status
from service.policy.decision import GO, Decision, later, never
from service.policy.pace import Admission
from service.policy.rules import consent_refusal, suppression_refusal
from service.policy.state import PolicyState
from service.routing import Consent, Notification
from service.stores.idempotency import IdempotencyStore, State
from service.stores.suppressions import address_digest


class Policy:
    """One answer per notification: go now, or never and why."""

    def __init__(
        self,
        store: IdempotencyStore,
        state: PolicyState,
        metrics: Metrics,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._state = state
        self._gates: dict[tuple[bool, str], asyncio.Lock] = {}
        self._metrics = metrics
        self._now = now

    async def decide(self, n: Notification) -> Decision:
        """Condition, consent, suppression, cap, pace, then the idempotency claim;
        StoreUnavailable while a store is out of reach (nothing is claimed then, so asking
        again is safe)."""
        decision = await self._decide(n)
        self._metrics.policy_decisions.labels(
            decision.verdict.value, decision.reason or "ok", n.category.value
        ).inc()
        return decision

    async def _decide(self, n: Notification) -> Decision:
        if not n.condition_met:
            return never(Status.SUPPRESSED, "condition_false")
        rule = self._state.categories[n.category]
        tables = self._state.tables
        if n.recipient.user_id:
            choices = tables.choices(n.recipient.user_id)
            refusal = consent_refusal(rule.consent, n.category, n.type, choices)
            if refusal:
                return never(Status.SUPPRESSED, refusal)
        elif rule.consent is Consent.REQUIRED:
            return never(Status.SUPPRESSED, "no_consent")  # no user: nobody could have opted in
        digest = address_digest(n.recipient.email, self._state.address_key)
        refusal = suppression_refusal(n.category, tables.suppressions(digest), self._now())
        if refusal:
            return never(Status.SUPPRESSED, refusal)
        if rule.cap is not None:
            counter = f"{digest}:{n.category.value}"
            if not await self._state.caps.take(
                counter, n.idempotency_key, rule.cap.max, rule.cap.seconds
            ):
                return never(Status.SUPPRESSED, "frequency_capped")
        admission = await self._paced(n)
        if not admission.go:
            return later(admission.wait_s, admission.limit or "relay")
        return await self._claim(n)

    async def _paced(self, n: Notification) -> Admission:
        """Pace's answer, short waits waited out. Waiters queue behind one gate per share and
        domain, so only the head asks again when a token frees, not every waiting mail."""
        pace = self._state.pace
        domain = n.recipient.email.rpartition("@")[2].lower()
        admission = await pace.admit(domain, n.priority)
        if admission.go or admission.wait_s > self._state.hold_s:
            return admission
        key = (pace.reserved(n.priority), domain if pace.domain_limited(domain) else "")
        gate = self._gates.setdefault(key, asyncio.Lock())
        async with gate:
            while True:
                admission = await pace.admit(domain, n.priority)
                if admission.go or admission.wait_s > self._state.hold_s:
                    return admission
                await asyncio.sleep(admission.wait_s)

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
