"""Herald's Grafana dashboard, built with grafana-foundation-sdk; writes herald.json beside it.

Run `python deploy/grafana/dashboard.py` after a change and commit both files: a test checks
that herald.json is what this script writes, and that every metric its panels query is one a
running Herald exports. Queries use Herald's own metrics only, not the recording rules, so the
dashboard works without deploy/prometheus/herald-rules.yaml loaded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, statetimeline, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    ValueMap,
    ValueMappingResult,
    VariableRefresh,
    VariableSort,
)

OUTPUT = Path(__file__).with_name("herald.json")

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
SELECT = 'instance=~"$instance"'
"""Every selector narrows to the instances chosen in the `instance` variable."""
RATE = "$__rate_interval"


def _target(expr: str, legend: str, ref: str) -> prometheus.Dataquery:
    return (
        prometheus.Dataquery()
        .expr(expr)
        .legend_format(legend)
        .ref_id(ref)
        .range()
        .datasource(DATASOURCE)
    )


def _quantiles(metric: str, by: str, legend: str) -> list[tuple[str, str]]:
    """p50 and p99 of a histogram, per `by` label (none when empty)."""
    group = f"le, {by}" if by else "le"
    return [
        (
            f"histogram_quantile({q}, sum by ({group}) "
            f"(rate({metric}_bucket{{{SELECT}}}[{RATE}])))",
            f"p{round(q * 100)} {legend}".rstrip(),
        )
        for q in (0.5, 0.99)
    ]


def _timeseries(
    title: str, description: str, unit: str, queries: list[tuple[str, str]], width: int
) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .min(0)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            common_builder.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
        .tooltip(
            common_builder.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_target(expr, legend, chr(ord("A") + i)))
    return panel


def _states(
    title: str, description: str, expr: str, legend: str, off: str, on: str, width: int
) -> statetimeline.Panel:
    """A 0/1 gauge as a timeline: green `off`, red `on`."""
    mapping = ValueMap(
        options={
            "0": ValueMappingResult(text=off, color="green", index=0),
            "1": ValueMappingResult(text=on, color="red", index=1),
        }
    )
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .mappings([mapping])
        .show_value(common.VisibilityMode.NEVER)
        .with_target(_target(expr, legend, "A"))
    )


def build() -> dict[str, Any]:
    """The dashboard as Grafana's JSON model."""
    builder = (
        dash.Dashboard("Herald")
        .uid("herald")
        .description("Herald: Kafka events to transactional email. Source: deploy/grafana.")
        .tags(["herald", "kafka", "email"])
        .time("now-1h", "now")
        .refresh("30s")
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .with_variable(
            dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
        .with_variable(
            dash.QueryVariable("instance")
            .label("Instance")
            .datasource(DATASOURCE)
            .query("label_values(herald_in_flight, instance)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".+")
        )
        .with_row(dash.Row("Throughput"))
        .with_panel(
            _timeseries(
                "Notifications by notification and status",
                "Outcomes per second when decided (herald_notifications_total); `none` is a "
                "record that never became a notification.",
                "cps",
                [
                    (
                        "sum by (notification, status) "
                        f"(rate(herald_notifications_total{{{SELECT}}}[{RATE}]))",
                        "{{notification}} {{status}}",
                    )
                ],
                16,
            )
        )
        .with_panel(
            _timeseries(
                "Records consumed by topic",
                "Records taken from input and retry topics, and those that could not be decoded.",
                "cps",
                [
                    (
                        f"sum by (topic) (rate(herald_records_consumed_total{{{SELECT}}}[{RATE}]))",
                        "{{topic}}",
                    ),
                    (
                        f"sum by (topic) (rate(herald_decode_failures_total{{{SELECT}}}[{RATE}]))",
                        "{{topic}} undecodable",
                    ),
                ],
                8,
            )
        )
        .with_row(dash.Row("Latency"))
        .with_panel(
            _timeseries(
                "Event to accepted, by priority",
                "From the event's occurred_at to the relay accepting its mail.",
                "s",
                _quantiles("herald_event_to_accepted_seconds", "priority", "{{priority}}"),
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Consume delay, by lane",
                "From a record's Kafka timestamp to Herald taking it: the part of the latency "
                "before the mail's own work.",
                "s",
                _quantiles("herald_consume_delay_seconds", "lane", "{{lane}}"),
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Render and SMTP time",
                "Rendering and composing one mail; one SMTP transaction.",
                "s",
                [
                    *_quantiles("herald_render_seconds", "", "render"),
                    *_quantiles("herald_smtp_seconds", "", "SMTP"),
                ],
                8,
            )
        )
        .with_row(dash.Row("Kafka"))
        .with_panel(
            _timeseries(
                "Consumer lag by topic",
                "Last stable offset minus Herald's committed position. A retry topic's lag is "
                "mail waiting for its round.",
                "short",
                [(f"sum by (topic) (herald_consumer_lag{{{SELECT}}})", "{{topic}}")],
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Transactions by result",
                "Transactions of outcomes and offsets: committed, or aborted and written again.",
                "cps",
                [
                    (
                        f"sum by (result) (rate(herald_transactions_total{{{SELECT}}}[{RATE}]))",
                        "{{result}}",
                    )
                ],
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Transaction time, by lane",
                "Finished records wait for their transaction before their outcomes are visible.",
                "s",
                _quantiles("herald_transaction_seconds", "lane", "{{lane}}"),
                8,
            )
        )
        .with_row(dash.Row("Delivery"))
        .with_panel(
            _timeseries(
                "SMTP attempts by result and reply class",
                "Every SMTP attempt: accepted, transient, permanent or unknown; 2xx, 4xx, 5xx, "
                "or none when no reply came.",
                "cps",
                [
                    (
                        "sum by (result, reply_class) "
                        f"(rate(herald_smtp_attempts_total{{{SELECT}}}[{RATE}]))",
                        "{{result}} {{reply_class}}",
                    )
                ],
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Retries scheduled and dead letters",
                "Notifications handed to a retry topic; records copied to the dead-letter topic.",
                "cps",
                [
                    (
                        "sum by (topic) "
                        f"(rate(herald_retries_scheduled_total{{{SELECT}}}[{RATE}]))",
                        "retry {{topic}}",
                    ),
                    (
                        f"sum by (reason) (rate(herald_dead_letters_total{{{SELECT}}}[{RATE}]))",
                        "dead letter {{reason}}",
                    ),
                ],
                8,
            )
        )
        .with_panel(
            _states(
                "SMTP circuit breaker",
                "Open while the relay fails as a whole; consumption pauses meanwhile.",
                f"max by (instance) (herald_smtp_breaker_open{{{SELECT}}})",
                "{{instance}}",
                "closed",
                "open",
                8,
            )
        )
        .with_row(dash.Row("Policy and feedback"))
        .with_panel(
            _timeseries(
                "Policy decisions by decision and reason",
                "The policy stage's answers: now, later (pace) or never, and why (opted_out, "
                "no_consent, suppressed_<reason>, frequency_capped, paced_<limit>, …).",
                "cps",
                [
                    (
                        "sum by (decision, reason) "
                        f"(rate(herald_policy_decisions_total{{{SELECT}}}[{RATE}]))",
                        "{{decision}} {{reason}}",
                    )
                ],
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Feedback and suppressions",
                "Bounces, complaints and deliveries processed (correlated: a correction of the "
                "outcome was published), and the suppressions they made.",
                "cps",
                [
                    (
                        "sum by (kind, correlated) "
                        f"(rate(herald_feedback_processed_total{{{SELECT}}}[{RATE}]))",
                        "{{kind}} correlated={{correlated}}",
                    ),
                    (
                        "sum by (reason) "
                        f"(rate(herald_feedback_suppressions_total{{{SELECT}}}[{RATE}]))",
                        "suppressed {{reason}}",
                    ),
                ],
                8,
            )
        )
        .with_panel(
            _timeseries(
                "Policy tables: lag behind their topics",
                "Records of the preferences and suppressions topics not yet in each instance's "
                "local table: choices and suppressions not honoured yet.",
                "short",
                [(f"max by (table) (herald_policy_table_lag{{{SELECT}}})", "{{table}}")],
                8,
            )
        )
        .with_row(dash.Row("Flow control"))
        .with_panel(
            _timeseries(
                "In flight by lane",
                "Records being processed, not counting finished ones awaiting their commit.",
                "short",
                [(f"sum by (lane) (herald_in_flight{{{SELECT}}})", "{{lane}}")],
                12,
            )
        )
        .with_panel(
            _states(
                "Paused lanes",
                "A lane pauses when its work in flight is full, its commits fall behind, or the "
                "breaker is open.",
                f"max by (lane) (herald_consumer_paused{{{SELECT}}})",
                "{{lane}}",
                "reading",
                "paused",
                12,
            )
        )
    )
    model: dict[str, Any] = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for number, panel in enumerate(model["panels"], start=1):
        panel["id"] = number  # stable ids, so links to a panel survive a regeneration
    return model


def render() -> str:
    """herald.json's text: the model with sorted keys, two-space indents, a final newline."""
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    OUTPUT.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {OUTPUT}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
