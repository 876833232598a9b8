"""The policy stage's pure rules and the routing table's category block."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from service.errors import ConfigError
from service.policy.rules import consent_refusal, suppression_refusal
from service.routing import Category, Consent, default_consent, load_table
from service.stores.suppressions import Scope, Suppression
from tests.conftest import ROOT

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("rule", "choices", "refusal"),
    [
        (Consent.NONE, {"all": False, "category:security": False}, None),
        (Consent.OPT_OUT, {}, None),
        (Consent.OPT_OUT, {"all": False}, "opted_out"),
        (Consent.OPT_OUT, {"category:activity": False}, "opted_out"),
        (Consent.OPT_OUT, {"type:activity.mention": False}, "opted_out"),
        (Consent.OPT_OUT, {"type:activity.task_assigned": False}, None),
        (Consent.OPT_OUT, {"category:report": False}, None),
        (Consent.OPT_OUT, {"category:activity": False, "type:activity.mention": True}, "opted_out"),
        (Consent.REQUIRED, {}, "no_consent"),
        (Consent.REQUIRED, {"all": True}, "no_consent"),
        (Consent.REQUIRED, {"category:activity": True}, None),
        (Consent.REQUIRED, {"type:activity.mention": True}, None),
        (Consent.REQUIRED, {"category:activity": True, "all": False}, "opted_out"),
    ],
)
def test_consent(rule: Consent, choices: dict[str, bool], refusal: str | None) -> None:
    assert refusal == consent_refusal(rule, Category.ACTIVITY, "activity.mention", choices)


def _suppression(scope: Scope, reason: str, expires: datetime | None = None) -> Suppression:
    return Suppression(
        address_digest="d" * 64,
        address_hint="a***@example.com",
        scope=scope,
        reason=reason,
        source="test",
        created_at=NOW - timedelta(days=1),
        expires_at=expires,
    )


def test_a_hard_bounce_stops_every_mail_a_complaint_only_optional_mail() -> None:
    bounce = [_suppression(Scope.ALL, "hard_bounce")]
    complaint = [_suppression(Scope.OPTIONAL, "complaint")]
    for category in Category:
        assert "suppressed_hard_bounce" == suppression_refusal(category, bounce, NOW)
        expected = "suppressed_complaint" if category.optional else None
        assert expected == suppression_refusal(category, complaint, NOW)


def test_a_lapsed_suppression_no_longer_applies() -> None:
    entries = [_suppression(Scope.ALL, "soft_bounces", expires=NOW)]
    assert suppression_refusal(Category.TRANSACTIONAL, entries, NOW) is None
    assert "suppressed_soft_bounces" == suppression_refusal(
        Category.TRANSACTIONAL, entries, NOW - timedelta(seconds=1)
    )


def test_the_wider_suppression_names_the_reason_and_unknown_reasons_read_other() -> None:
    entries = [_suppression(Scope.OPTIONAL, "complaint"), _suppression(Scope.ALL, "x" * 500)]
    assert "suppressed_other" == suppression_refusal(Category.ACTIVITY, entries, NOW)


def test_categories_default_to_their_consent_rule() -> None:
    table = load_table(ROOT / "deploy" / "routing.yaml")
    assert Consent.NONE == table.categories[Category.SECURITY].consent
    assert Consent.OPT_OUT == table.categories[Category.ACTIVITY].consent
    assert Consent.REQUIRED == table.categories[Category.MARKETING].consent
    assert all(table.categories[c].consent == default_consent(c) for c in Category)


def _table(tmp_path: Path, categories: object) -> Path:
    raw = yaml.safe_load((ROOT / "deploy" / "routing.yaml").read_text())
    raw["categories"] = categories
    path = tmp_path / "routing.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("categories", "key", "fix"),
    [
        ({"marketing": {"consent": "opt_out"}}, "categories.marketing.consent", "required"),
        ({"security": {"consent": "opt_out"}}, "categories.security.consent", "none"),
        ({"transactional": {"consent": "required"}}, "categories.transactional.consent", "none"),
        ({"activity": {"consent": "none"}}, "categories.activity.consent", "opt_out"),
        ({"promo": {"consent": "required"}}, "categories.promo", "allowed values"),
        ({"activity": {"cap": {"max": 3, "per": "1 day"}}}, "categories.activity.cap.per", ""),
        ({"activity": {"cap": {"max": 0, "per": "1d"}}}, "categories.activity.cap.max", ""),
    ],
)
def test_a_rule_that_would_confuse_kinds_of_mail_is_refused(
    tmp_path: Path, categories: object, key: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_table(_table(tmp_path, categories))
    assert key == caught.value.key
    assert fix in caught.value.fix


def test_an_optional_category_may_require_opt_in_and_take_a_cap(tmp_path: Path) -> None:
    table = load_table(
        _table(tmp_path, {"report": {"consent": "required", "cap": {"max": 2, "per": "7d"}}})
    )
    rule = table.categories[Category.REPORT]
    assert Consent.REQUIRED == rule.consent
    assert rule.cap is not None
    assert (2, 7 * 86400) == (rule.cap.max, rule.cap.seconds)
