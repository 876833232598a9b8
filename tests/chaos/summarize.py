"""Print the latest chaos figures as a Markdown table, for docs/reliability.md.

    .venv/bin/python -m tests.chaos.summarize [var/chaos/runs.jsonl] [--scale quick|full]

One row per scenario and scale: the most recent run recorded by the suite.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tests.chaos.checker import RUNS_FILE

VIOLATIONS = (
    "missing",
    "duplicate_outcomes",
    "duplicate_message_ids",
    "lost",
    "phantom",
    "wrong_status",
    "unmatched",
    "dead_letter_missing",
    "uncommitted",
)


def passed(row: dict[str, Any]) -> bool:
    extra = [v for v in row.get("extra", {}).values() if isinstance(v, int)]
    return not any(row.get(k) for k in VIOLATIONS) and not any(extra)


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| scenario | scale | records | outcomes | lost | dup. outcomes | dup. Message-IDs "
        "| missing | UNKNOWN | DEDUPLICATED | drain (s) | total (s) | result | commit |\n"
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n"
    )
    lines = []
    for r in rows:
        by = r.get("by_status", {})
        lines.append(
            f"| {r['scenario']} | {r['scale']} | {r['records']} | {r['outcomes']} | {r['lost']} "
            f"| {r['duplicate_outcomes']} | {r['duplicate_message_ids']} | {r['missing']} "
            f"| {by.get('UNKNOWN', 0)} | {by.get('DEDUPLICATED', 0)} | {r['drain_s']:.1f} "
            f"| {r['elapsed_s']:.1f} | {'pass' if passed(r) else 'FAIL'} | {r.get('commit', '')} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("file", nargs="?", type=Path, default=RUNS_FILE)
    ap.add_argument("--scale", choices=["quick", "full"])
    args = ap.parse_args(argv)
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for line in args.file.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if args.scale in (None, row["scale"]):
            latest[(row["scenario"], row["scale"])] = row
    sys.stdout.write(table(sorted(latest.values(), key=lambda r: (r["scale"], r["scenario"]))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
