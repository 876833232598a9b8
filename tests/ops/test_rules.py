"""The Prometheus rules in deploy/prometheus/: promtool accepts them and their unit tests pass,
every alert is tested both ways, is documented, and reads only what Herald exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.exposition import generate_latest

from service.metrics import Metrics
from tests.conftest import ROOT
from tests.ops.promql import (
    RULE_TESTS,
    RULES,
    alerting_rules,
    exported_series,
    metric_names,
    recording_rules,
)

OPERATIONS = ROOT / "docs" / "operations.md"


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run Debian's promtool (installed by `make system-deps`) and return what it said."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make system-deps`")
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_promtool_accepts_the_rules() -> None:
    """`promtool check rules` finds no syntax error, bad template or duplicate rule."""
    result = promtool("check", "rules", RULES)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert f"SUCCESS: {len(recording_rules()) + len(alerting_rules())} rules found" in result.stdout


def test_the_rule_unit_tests_pass() -> None:
    """`promtool test rules` passes every case of herald-rules.test.yaml."""
    result = promtool("test", "rules", RULE_TESTS)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """A case expecting the wrong severity makes `promtool test rules` fail, naming the alert."""
    shutil.copy(RULES, tmp_path / RULES.name)
    text = RULE_TESTS.read_text(encoding="utf-8")
    right = '{severity: page, job: herald, instance: "h1:9464"}'
    assert right in text
    (tmp_path / RULE_TESTS.name).write_text(
        text.replace(right, right.replace("page", "warning")), encoding="utf-8"
    )

    result = promtool("test", "rules", tmp_path / RULE_TESTS.name)

    assert 1 == result.returncode
    assert "alertname: HeraldInstanceDown" in result.stdout + result.stderr


def test_every_alert_has_a_case_that_fires_and_one_that_does_not() -> None:
    """Each alert of the rules file is expected firing somewhere in the unit tests, and quiet
    somewhere else."""
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    alerts = {rule["alert"] for rule in alerting_rules()}
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert (alerts, alerts) == (fires & alerts, quiet & alerts)


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_severity_and_a_runbook_in_the_docs() -> None:
    """Each alert carries a severity Alertmanager can route on, a summary and a description,
    and a runbook that is a section of docs/operations.md."""
    anchors = _anchors(OPERATIONS.read_text(encoding="utf-8"))
    for rule in alerting_rules():
        assert rule["labels"]["severity"] in {"page", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook"} == set(annotations), rule["alert"]
        doc, _, anchor = annotations["runbook"].partition("#")
        assert ("docs/operations.md", True) == (doc, anchor in anchors), rule["alert"]


def _unexported(exprs: list[str]) -> set[str]:
    """Metric names the expressions select that are neither declared by Herald, recorded by
    the rules file, nor Prometheus's own `up`."""
    exported = exported_series(generate_latest(Metrics().registry).decode())
    recorded = {rule["record"] for rule in recording_rules()}
    return {name for e in exprs for name in metric_names(e)} - exported - recorded - {"up"}


def test_the_rules_read_only_metrics_herald_exports() -> None:
    """Every metric a rule selects is one Herald declares, a recording rule of the file, or
    Prometheus's own `up`; a made-up name is caught."""
    rules = [*recording_rules(), *alerting_rules()]
    assert set() == _unexported([rule["expr"] for rule in rules])
    made_up = "rate(herald_mails_bounced_total[5m]) > 0 and herald_consumer_lag > 0"
    assert {"herald_mails_bounced_total"} == _unexported([made_up])


def test_metric_names_skips_functions_labels_durations_and_keywords() -> None:
    """The extractor returns the selected metrics of an expression and nothing else."""
    expr = """
      max by (job, reason) (
          increase(herald_dead_letters_total{reason!~"a|b"}[15m]) > 0
        or (herald_dead_letters_total unless on (job) up offset 15m)
      ) / ignoring (reason) group_left sum(rate(x:y:rate5m[$__rate_interval])) > bool 1e3
      and histogram_quantile(0.99, sum by (le) (rate(herald_smtp_seconds_bucket[5m])))
    """
    assert {"herald_dead_letters_total", "up", "x:y:rate5m", "herald_smtp_seconds_bucket"} == (
        metric_names(expr)
    )
