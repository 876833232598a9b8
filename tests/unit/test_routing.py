"""Routing: table validation with precise errors, conditions, fan-out and recipients."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError, RoutingError
from service.routing import Category, RoutingTable, idempotency_key, load_table, route
from tests.conftest import ROOT, make_event

GOOD = """
version: 1
events:
  order.confirmed:
    schema: herald.events.OrderConfirmed
    notifications:
      - type: order.receipt
        template: order_receipt
        category: transactional
        priority: high
      - type: order.big_spender
        template: order_receipt
        category: activity
        when: "payload.total.amount_minor >= 100000"
      - type: order.gift_receipt
        template: order_receipt
        category: transactional
        recipient: payload.gift_recipient
        when: "payload.gift_recipient is not none"
"""


def _table(tmp_path: Path, text: str = GOOD) -> RoutingTable:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    return load_table(path)


def _config_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _table(tmp_path, text)
    return info.value


def test_project_table_loads() -> None:
    """The shipped routing table is valid and routes the three first event types."""
    table = load_table(ROOT / "deploy" / "routing.yaml")
    assert {"order.confirmed", "user.signed_up", "login.suspicious"} <= set(table.events)
    assert Category.SECURITY == table.routes["login.suspicious"][0].spec.category


def test_fan_out_and_conditions(tmp_path: Path) -> None:
    """One event gives one notification per route; a false condition marks it suppressed."""
    table = _table(tmp_path)
    event = make_event(
        "order.confirmed",
        {
            "total": {"amount_minor": 250_000, "currency": "EUR"},
            "gift_recipient": {"email": "friend@example.com", "display_name": "Friend"},
        },
    )
    out = route(event, table)
    assert ["order.receipt", "order.big_spender", "order.gift_receipt"] == [n.type for n in out]
    assert [True, True, True] == [n.condition_met for n in out]
    assert "friend@example.com" == out[2].recipient.email
    assert "en" == out[2].recipient.locale  # inherited from the event's recipient

    small = make_event(
        "order.confirmed",
        {"total": {"amount_minor": 10, "currency": "EUR"}, "gift_recipient": None},
    )
    out = route(small, table)
    assert [True, False, False] == [n.condition_met for n in out]


def test_idempotency_key_is_stable_and_distinct(tmp_path: Path) -> None:
    """Same event, type and recipient → same key (case-insensitive address); else different."""
    assert idempotency_key("e", "t", "A@Example.com") == idempotency_key("e", "t", "a@example.com")
    assert idempotency_key("e", "t", "a@example.com") != idempotency_key("e", "u", "a@example.com")
    assert 32 == len(idempotency_key("e", "t", "a@example.com"))


def test_condition_on_a_missing_field_is_a_routing_error(tmp_path: Path) -> None:
    """StrictUndefined: a condition naming an absent field fails loudly, not as false."""
    table = _table(tmp_path)
    with pytest.raises(RoutingError, match=r"order\.big_spender"):
        route(make_event("order.confirmed", {}), table)


def test_event_type_without_route_is_a_routing_error(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match=r"no route for event type 'user\.signed_up'"):
        route(make_event("user.signed_up", {}), _table(tmp_path))


@pytest.mark.parametrize(
    ("broken", "key", "fix"),
    [
        (
            GOOD.replace("category: activity", "category: promo"),
            "events.order.confirmed.notifications[1].category",
            "allowed values",
        ),
        (
            GOOD.replace(
                "        priority: high\n", "        priority: high\n        colour: red\n"
            ),
            "events.order.confirmed.notifications[0].colour",
            "remove this key",
        ),
        (
            GOOD.replace(
                "        template: order_receipt\n        category: transactional\n"
                "        priority: high\n",
                "        category: transactional\n",
            ),
            "events.order.confirmed.notifications[0].template",
            "add this key",
        ),
        (GOOD.replace("version: 1", "version: 2"), "version", "allowed values"),
        (
            GOOD.replace('"payload.total.amount_minor >= 100000"', '"payload.total >>= 1"'),
            "events.order.confirmed.notifications[1].when",
            "Jinja2 expression",
        ),
        (
            GOOD.replace("type: order.big_spender", "type: order.receipt"),
            "events.order.confirmed.notifications[1].type",
            "its own notification type",
        ),
        (
            GOOD.replace("recipient: payload.gift_recipient", "recipient: headers.to"),
            "events.order.confirmed.notifications[2].recipient",
            "see the table format",
        ),
        ("version: 1\nevents: [", "(syntax)", "fix the YAML"),
    ],
)
def test_validation_errors_name_file_key_and_fix(
    tmp_path: Path, broken: str, key: str, fix: str
) -> None:
    """Every kind of mistake is reported with the file, the dotted key and a fix."""
    err = _config_error(tmp_path, broken)
    assert str(tmp_path / "routing.yaml") == err.file
    assert key == err.key
    assert fix in err.fix


def test_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="HERALD_ROUTING_FILE"):
        load_table(tmp_path / "nope.yaml")
