"""deploy/grafana/herald.json: what its generator writes, queried through the datasource
variable, and naming only metrics Herald declares (the live check is in
tests/integration/test_prometheus.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
from types import ModuleType
from typing import Any

from prometheus_client.exposition import generate_latest

from service.metrics import Metrics
from tests.ops.promql import DASHBOARD, dashboard_queries, unknown_metrics


def generator() -> ModuleType:
    """deploy/grafana/dashboard.py, imported from its path (deploy/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "herald_dashboard", DASHBOARD.with_name("dashboard.py")
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def declared() -> str:
    """The exposition of a fresh Metrics: every family Herald declares, before any count."""
    return generate_latest(Metrics().registry).decode()


def test_herald_json_is_what_the_generator_writes() -> None:
    """The committed dashboard is byte for byte the generator's output: regenerate and commit
    both after a change."""
    assert DASHBOARD.read_text(encoding="utf-8") == generator().render()


def test_every_query_goes_through_the_datasource_variable() -> None:
    """A `datasource` variable of type prometheus, and every panel and query uses it."""
    model = dashboard()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert ("datasource", "prometheus") == (
        variables["datasource"]["type"],
        variables["datasource"]["query"],
    )
    ref = {"type": "prometheus", "uid": "${datasource}"}
    panels = [p for p in model["panels"] if p["type"] != "row"]
    assert [] == [p["title"] for p in panels if p["datasource"] != ref]
    assert [] == [p["title"] for p in panels for t in p["targets"] if t["datasource"] != ref]
    assert ref == variables["instance"]["datasource"]


def test_the_panels_cover_what_an_operator_watches() -> None:
    """Throughput, latency, lag, retries and dead letters, the breaker, SMTP reply classes,
    transactions, in-flight and paused lanes, render and SMTP time, policy decisions, feedback
    and the policy tables' lag each have a panel."""
    titles = {p["title"] for p in dashboard()["panels"] if p["type"] != "row"}
    assert {
        "Notifications by notification and status",
        "Records consumed by topic",
        "Event to accepted, by priority",
        "Consume delay, by lane",
        "Render and SMTP time",
        "Consumer lag by topic",
        "Transactions by result",
        "Transaction time, by lane",
        "SMTP attempts by result and reply class",
        "Retries scheduled and dead letters",
        "SMTP circuit breaker",
        "In flight by lane",
        "Paused lanes",
        "Policy decisions by decision and reason",
        "Feedback and suppressions",
        "Policy tables: lag behind their topics",
    } == titles


def test_every_metric_the_dashboard_queries_is_declared_by_herald() -> None:
    """No panel or variable names a metric that Herald's Metrics does not declare."""
    model = dashboard()
    assert len(dashboard_queries(model)) > len(model["panels"]) / 2
    assert {} == unknown_metrics(model, declared())


def test_a_panel_naming_a_metric_herald_lacks_is_caught() -> None:
    """A renamed metric and an invented one are reported against the panel or variable that
    names them."""
    model = dashboard()
    text = json.dumps(model).replace("herald_smtp_attempts_total", "herald_smtp_tries_total")
    renamed = json.loads(text)
    invented = copy.deepcopy(model)
    panel = next(p for p in invented["panels"] if p["title"] == "Consumer lag by topic")
    panel["targets"].append({**panel["targets"][0], "expr": "sum(herald_mails_bounced_total)"})

    variable = json.loads(json.dumps(model).replace("values(herald_in_flight", "values(in_flight"))

    assert {"variable instance": {"in_flight"}} == unknown_metrics(variable, declared())
    assert {"SMTP attempts by result and reply class": {"herald_smtp_tries_total"}} == (
        unknown_metrics(renamed, declared())
    )
    assert {"Consumer lag by topic": {"herald_mails_bounced_total"}} == (
        unknown_metrics(invented, declared())
    )
