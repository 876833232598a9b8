"""The policy stage in order: condition, consent, suppression, cap, claim; with its metric."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.app import Loaded
from service.metrics import Metrics
from service.outcomes.status import Status
from service.policy.pace import Pace
from service.policy.policy import Policy
from service.policy.state import PolicyState
from service.routing import CapSpec, Category, CategoryRule, Consent, Notification, route
from service.settings import PaceSettings
from service.stores.consent import Preference
from service.stores.pace import MemoryPaceStore
from service.stores.running import codecs
from service.stores.suppressions import Scope, Suppression, address_digest, address_hint
from service.testing import MemoryStore
from tests.conftest import ADDRESS_KEY, event_from_example, local_policy_state

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
USER = "user-7"
EMAIL = "ada@example.com"


class Stage:
    """A Policy on local tables and embedded caps, filled as the followers would fill them."""

    def __init__(self, loaded: Loaded, tmp: Path, **rules: CategoryRule) -> None:
        self.loaded = loaded
        state = local_policy_state(loaded, tmp)
        categories = {**state.categories, **{Category(k): v for k, v in rules.items()}}
        self.state: PolicyState = dataclasses.replace(state, categories=categories)
        self.store = MemoryStore()
        self.metrics = Metrics()
        self.policy = Policy(self.store, self.state, self.metrics, now=lambda: NOW)

    def notification(self, event_type: str, **recipient: Any) -> Notification:
        event = event_from_example(
            self.loaded, event_type, **{"user_id": USER, "email": EMAIL, **recipient}
        )
        return route(event, self.loaded.table)[0]

    def choose(self, scope: str, subscribed: bool) -> None:
        codec, _ = codecs(self.loaded.store)
        p = Preference(user_id=USER, scope=scope, subscribed=subscribed, updated_at=NOW, source="t")
        self.state.tables.apply_preferences([(p.key, codec.encode(p))])

    def suppress(self, scope: Scope, reason: str, *, expires: datetime | None = None) -> None:
        _, codec = codecs(self.loaded.store)
        s = Suppression(
            address_digest=address_digest(EMAIL, ADDRESS_KEY.encode()),
            address_hint=address_hint(EMAIL),
            scope=scope,
            reason=reason,
            source="t",
            created_at=NOW - timedelta(days=1),
            expires_at=expires,
        )
        self.state.tables.apply_suppressions([(s.key, codec.encode(s))])

    async def answer(self, n: Notification) -> tuple[Status | None, str | None]:
        d = await self.policy.decide(n)
        return (None, None) if d.go else (d.status, d.reason)


async def test_an_opt_out_stops_optional_mail_never_a_password_reset(
    loaded: Loaded, tmp_path: Path
) -> None:
    stage = Stage(loaded, tmp_path)
    mention = stage.notification("comment.mentioned")
    assert (None, None) == await stage.answer(mention)
    stage.choose("all", False)
    assert (Status.SUPPRESSED, "opted_out") == await stage.answer(
        stage.notification("comment.mentioned", email="ada2@example.com")
    )
    assert (None, None) == await stage.answer(stage.notification("password.reset_requested"))
    assert (None, None) == await stage.answer(stage.notification("order.confirmed"))
    sample = stage.metrics.registry.get_sample_value(
        "herald_policy_decisions_total",
        {"decision": "never", "reason": "opted_out", "category": "activity"},
    )
    assert 1 == sample


async def test_commercial_mail_waits_for_an_opt_in(loaded: Loaded, tmp_path: Path) -> None:
    stage = Stage(loaded, tmp_path, activity=CategoryRule(consent=Consent.REQUIRED))
    assert (Status.SUPPRESSED, "no_consent") == await stage.answer(
        stage.notification("comment.mentioned")
    )
    nobody = stage.notification("comment.mentioned", user_id="")
    assert (Status.SUPPRESSED, "no_consent") == await stage.answer(nobody)
    stage.choose("type:activity.mention", True)
    assert (None, None) == await stage.answer(stage.notification("comment.mentioned"))


async def test_suppressions_by_scope_and_expiry(loaded: Loaded, tmp_path: Path) -> None:
    stage = Stage(loaded, tmp_path)
    stage.suppress(Scope.OPTIONAL, "complaint")
    assert (Status.SUPPRESSED, "suppressed_complaint") == await stage.answer(
        stage.notification("comment.mentioned")
    )
    assert (None, None) == await stage.answer(stage.notification("password.reset_requested"))
    stage.suppress(Scope.ALL, "hard_bounce", expires=NOW + timedelta(seconds=1))
    assert (Status.SUPPRESSED, "suppressed_hard_bounce") == await stage.answer(
        stage.notification("order.confirmed")
    )
    upper = stage.notification("order.confirmed", email=EMAIL.upper())
    assert (Status.SUPPRESSED, "suppressed_hard_bounce") == await stage.answer(upper)


async def test_a_cap_counts_each_notification_once(loaded: Loaded, tmp_path: Path) -> None:
    cap = CapSpec(max=2, per="24h")
    stage = Stage(loaded, tmp_path, activity=CategoryRule(consent=Consent.OPT_OUT, cap=cap))
    first = stage.notification("comment.mentioned")
    answers = [await stage.answer(first)]
    for i in range(3):
        event = event_from_example(loaded, "comment.mentioned", user_id=USER, email=EMAIL)
        event = dataclasses.replace(event, event_id=f"e-{i}")
        answers.append(await stage.answer(route(event, loaded.table)[0]))
    assert [(None, None), (None, None)] == answers[:2]
    assert [(Status.SUPPRESSED, "frequency_capped")] * 2 == answers[2:]
    stage.store.values.clear()  # a redelivery of the first: counted already, not again
    assert (None, None) == await stage.answer(first)
    assert (None, None) == await stage.answer(stage.notification("report.ready"))


async def test_rules_run_before_the_claim_so_a_refusal_claims_nothing(
    loaded: Loaded, tmp_path: Path
) -> None:
    stage = Stage(loaded, tmp_path)
    stage.choose("category:activity", False)
    await stage.answer(stage.notification("comment.mentioned"))
    assert {} == stage.store.values
    n = stage.notification("password.reset_requested")
    assert (None, None) == await stage.answer(n)
    assert n.idempotency_key in stage.store.values


@pytest.mark.parametrize("event_type", ["comment.mentioned", "password.reset_requested"])
async def test_a_false_condition_ends_it_first(
    loaded: Loaded, tmp_path: Path, event_type: str
) -> None:
    stage = Stage(loaded, tmp_path)
    stage.suppress(Scope.ALL, "hard_bounce")
    n = dataclasses.replace(stage.notification(event_type), condition_met=False)
    assert (Status.SUPPRESSED, "condition_false") == await stage.answer(n)


def _paced(stage: Stage, hold_s: float, **pace: Any) -> None:
    settings = PaceSettings(**pace)
    replaced = dataclasses.replace(
        stage.state, pace=Pace(settings, MemoryPaceStore()), hold_s=hold_s
    )
    stage.state = replaced
    stage.policy = Policy(stage.store, replaced, stage.metrics, now=lambda: NOW)


def _nth(stage: Stage, event_type: str, i: int) -> Notification:
    event = event_from_example(stage.loaded, event_type, user_id=USER, email=EMAIL)
    return route(dataclasses.replace(event, event_id=f"e-{i}"), stage.loaded.table)[0]


async def test_over_the_relay_rate_bulk_is_deferred_critical_still_goes(
    loaded: Loaded, tmp_path: Path
) -> None:
    stage = Stage(loaded, tmp_path)
    _paced(stage, 0.0, relay={"rate": "60/min", "burst": 5}, critical_share=0.4)
    answers = [await stage.policy.decide(_nth(stage, "comment.mentioned", i)) for i in range(4)]
    assert [True, True, True, False] == [a.go for a in answers]
    late = answers[3]
    assert late.deferred
    assert "paced_relay" == late.reason
    assert 0 < late.wait_s <= 1.0
    assert {} != stage.store.values
    assert _nth(stage, "comment.mentioned", 3).idempotency_key not in stage.store.values
    codes = [await stage.policy.decide(_nth(stage, "login.otp_requested", i)) for i in range(2)]
    assert [True, True] == [a.go for a in codes], "critical mail has its own share"
    assert not (await stage.policy.decide(_nth(stage, "login.otp_requested", 9))).go


async def test_a_short_wait_is_waited_out_in_the_stage(loaded: Loaded, tmp_path: Path) -> None:
    stage = Stage(loaded, tmp_path)
    _paced(stage, 5.0, relay={"rate": "50/s", "burst": 1})
    answers = await asyncio.gather(
        *(stage.policy.decide(_nth(stage, "comment.mentioned", i)) for i in range(6))
    )
    assert all(a.go for a in answers)
    assert 6 == len(stage.store.values)
