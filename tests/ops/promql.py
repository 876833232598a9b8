"""What the operations files read: metric names in PromQL, and the series names an exposition
declares, so a rule or a panel that names a metric Herald does not export is found."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "herald-rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "herald-rules.test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "herald.json"

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_VALUES = re.compile(r"\s*label_values\((.+),\s*\w+\)\s*$")
"""Grafana's `label_values(<series selector>, <label>)`, not PromQL."""
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "atan2"}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRINGS.sub('""', expr)
    for pattern in (_MATCHERS, _RANGES, _GROUPING):
        text = pattern.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _KEYWORDS:
            names.add(match.group())
    return names


def exported_series(exposition: str) -> set[str]:
    """Every series name an exposition declares, with or without samples yet: a labelled
    counter appears with its HELP and TYPE before it first counts."""
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def rule_groups(path: Path = RULES) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return groups


def alerting_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [r for g in rule_groups(path) for r in g["rules"] if "alert" in r]


def recording_rules(path: Path = RULES) -> list[dict[str, Any]]:
    return [r for g in rule_groups(path) for r in g["rules"] if "record" in r]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows' own panels included, and
    ("variable <name>", selector) for each `label_values(<selector>, label)` variable."""
    out: list[tuple[str, str]] = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            out.extend((inner["title"], t["expr"]) for t in inner.get("targets", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        found = _LABEL_VALUES.match(str(variable.get("query", "")))
        if variable.get("type") == "query" and found:
            out.append((f"variable {variable['name']}", found.group(1)))
    return out


def unknown_metrics(dashboard: dict[str, Any], exposition: str) -> dict[str, set[str]]:
    """Panel title -> the metric names its queries use that the exposition does not declare."""
    known = exported_series(exposition)
    missing: dict[str, set[str]] = {}
    for title, expr in dashboard_queries(dashboard):
        if unknown := metric_names(expr) - known:
            missing.setdefault(title, set()).update(unknown)
    return missing
