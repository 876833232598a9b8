"""A picture of herald.json's panels drawn from a Prometheus with matplotlib, for documents and
for places without Grafana. Each panel's queries go to Prometheus's `query_range` as written in
the dashboard (`$instance` as every instance); the layout follows the panels' grid positions.

    python deploy/grafana/snapshot.py --prometheus http://127.0.0.1:9090 --minutes 15 \
        --out docs/img/dashboard.png

It prints one line per panel with the number of series drawn.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib as mpl

mpl.use("Agg")  # files only; no display is needed or wanted

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter
from PIL import Image

DASHBOARD = Path(__file__).with_name("herald.json")
COLUMNS = 24
"""Grafana's grid is 24 columns wide."""
WIDTH_IN = 16.0
UNIT_IN = 0.3
"""Inches per grid row: a Grafana row is 30 px high where its 24 columns fill about 1,700 px."""
HEADER_IN = 0.5
LEGEND_ENTRIES = 6
"""Past this, a panel's legend names the series with the highest last values and counts the
rest: Grafana would scroll a table."""
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def expand(expr: str, rate_interval: str) -> str:
    """A panel query as Grafana would send it with every instance selected."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", ".+")


def query_range(
    prometheus: str, expr: str, start: float, end: float, step: float
) -> list[dict[str, Any]]:
    """The matrix of a range query; an error answer raises."""
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    url = f"{prometheus}/api/v1/query_range?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 (a URL the user gave)
        answer = json.loads(resp.read())
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer}")
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def legend(template: str, labels: dict[str, str]) -> str:
    return _LEGEND.sub(lambda m: labels.get(m.group(1), ""), template).strip() or "value"


def _format(unit: str) -> FuncFormatter:
    def seconds(v: float, _: object) -> str:
        return f"{v * 1000:g} ms" if 0 < abs(v) < 1 else f"{v:g} s"

    def per_second(v: float, _: object) -> str:
        return f"{v:g}/s"

    def plain(v: float, _: object) -> str:
        return f"{v:g}"

    return FuncFormatter({"s": seconds, "cps": per_second}.get(unit, plain))


def _minutes(t: float | str, end: float) -> float:
    """Minutes before the end of the range: the x axis of every panel."""
    return (float(t) - end) / 60


def _number(v: str) -> float:
    return math.nan if v in ("NaN", "+Inf", "-Inf") else float(v)


def _draw_timeseries(
    ax: Axes, panel: dict[str, Any], series: list[tuple[str, Any]], end: float
) -> None:
    lines = []
    for label, values in series:
        ys = [_number(v) for _, v in values]
        (line,) = ax.plot([_minutes(t, end) for t, _ in values], ys, linewidth=1.2, label=label)
        last = next((y for y in reversed(ys) if not math.isnan(y)), 0.0)
        lines.append((last, line))
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
    ax.yaxis.set_major_formatter(_format(unit))
    ax.set_ylim(bottom=0)
    if not lines:
        return
    lines.sort(key=lambda pair: -pair[0])
    shown = [line for _, line in lines[:LEGEND_ENTRIES]]
    labels = [str(line.get_label()) for line in shown]
    if len(lines) > LEGEND_ENTRIES:
        shown.append(Line2D([], [], linewidth=0))
        labels.append(f"and {len(lines) - LEGEND_ENTRIES} more")
    ax.legend(shown, labels, fontsize=6, loc="upper left", ncol=2, framealpha=0.7)


def _draw_states(
    ax: Axes, panel: dict[str, Any], series: list[tuple[str, Any]], end: float
) -> None:
    mappings = panel.get("fieldConfig", {}).get("defaults", {}).get("mappings", [])
    options = mappings[0]["options"] if mappings else {}
    colours = {"green": "#56a64b", "red": "#e02f44"}
    for row, (_, values) in enumerate(series):
        for (t, v), after in zip(values, [*values[1:], None], strict=True):
            x0 = _minutes(t, end)
            x1 = _minutes(after[0], end) if after else x0
            value = _number(v)
            key = "" if math.isnan(value) else f"{value:g}"
            colour = colours.get(options.get(key, {}).get("color", ""), "#888888")
            ax.barh(row, x1 - x0, left=x0, height=0.8, color=colour, linewidth=0)
    ax.set_yticks(range(len(series)), [label for label, _ in series], fontsize=7)
    key = ", ".join(f"{o['text']}: {o['color']}" for o in options.values())
    ax.text(1.0, 1.01, key, transform=ax.transAxes, fontsize=6, ha="right", va="bottom")


def render(
    dashboard: dict[str, Any],
    prometheus: str,
    start: float,
    end: float,
    step: float,
    rate_interval: str,
) -> tuple[Figure, dict[str, int]]:
    """The figure, and the number of series drawn per panel title."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    height = HEADER_IN + rows * UNIT_IN
    fig = plt.figure(figsize=(WIDTH_IN, height))
    fig.text(
        0.005,
        1 - 0.2 / height,
        f"{dashboard['title']}, the last {(end - start) / 60:.0f} minutes: drawn from Prometheus "
        "data by deploy/grafana/snapshot.py, not by Grafana. X axes: minutes before the end.",
        fontsize=10,
        va="center",
    )
    drawn: dict[str, int] = {}
    for panel in panels:
        g = panel["gridPos"]
        x, w = g["x"] * WIDTH_IN / COLUMNS, g["w"] * WIDTH_IN / COLUMNS
        top, h = HEADER_IN + g["y"] * UNIT_IN, g["h"] * UNIT_IN
        if panel["type"] == "row":
            fig.text(
                (x + 0.05) / WIDTH_IN,
                1 - (top + h / 2) / height,
                panel["title"],
                fontsize=9,
                weight="bold",
                va="center",
            )
            continue
        left = 0.9 if panel["type"] == "state-timeline" else 0.55
        ax = fig.add_axes(
            (
                (x + left) / WIDTH_IN,
                1 - (top + h - 0.3) / height,
                (w - left - 0.15) / WIDTH_IN,
                (h - 0.6) / height,
            )
        )
        ax.set_title(panel["title"], fontsize=8, loc="left")
        ax.tick_params(labelsize=6)
        series: list[tuple[str, Any]] = []
        for target in panel.get("targets", []):
            for s in query_range(
                prometheus, expand(target["expr"], rate_interval), start, end, step
            ):
                series.append((legend(target.get("legendFormat", ""), s["metric"]), s["values"]))
        if panel["type"] == "state-timeline":
            _draw_states(ax, panel, series, end)
        else:
            _draw_timeseries(ax, panel, series, end)
        ax.set_xlim(_minutes(start, end), 0)
        drawn[panel["title"]] = len(series)
    return fig, drawn


def save_small(fig: Figure, out: Path, dpi: int) -> None:
    """PNG with a 64-colour palette: a chart has few colours, and the file stays small."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    image = Image.open(buffer).convert("RGB").quantize(colors=64)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--minutes", type=float, default=15, help="how far back from --end")
    parser.add_argument("--start", type=float, help="Unix time; overrides --minutes")
    parser.add_argument("--end", type=float, help="Unix time (default: now)")
    parser.add_argument("--step", type=float, default=5, help="seconds between points")
    parser.add_argument("--rate-interval", default="1m", help="what $__rate_interval becomes")
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("docs/img/dashboard.png"))
    args = parser.parse_args(argv)
    end = args.end if args.end is not None else time.time()
    start = args.start if args.start is not None else end - args.minutes * 60
    dashboard = json.loads(args.dashboard.read_text(encoding="utf-8"))
    fig, drawn = render(dashboard, args.prometheus, start, end, args.step, args.rate_interval)
    save_small(fig, args.out, args.dpi)
    plt.close(fig)
    for title, count in drawn.items():
        sys.stdout.write(f"{count:3d} series  {title}\n")
    sys.stdout.write(f"wrote {args.out} ({args.out.stat().st_size} bytes)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
