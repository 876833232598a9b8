"""Where Herald's time goes: py-spy samples (or a cProfile dump) folded into a few buckets.

A py-spy sample is charged to the first bucket found walking its stack from the leaf up, so
e.g. a regex run by the email package counts as MIME building, and time inside the css_inline
extension (a C call, so the leaf Python frame is the renderer's line that calls it) counts as
CSS inlining.
"""

from __future__ import annotations

import pstats
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def _lines_calling(path: Path, needle: str) -> set[int]:
    try:
        text = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return set()
    return {i for i, line in enumerate(text, 1) if needle in line}


_INLINE_LINES = _lines_calling(ROOT / "service" / "render" / "renderer.py", "_inliner.inline(")

BUCKETS: list[tuple[str, tuple[str, ...]]] = [
    # Also matched by line, below: the renderer's calls into css_inline.
    ("CSS inlining (css_inline)", ("service/render/preinline.py", "service/render/scanner.py")),
    ("MIME building (service/delivery/mime.py)", ("/email/", "service/delivery/mime.py")),
    (
        "DKIM signing (service/delivery/dkim.py, cryptography)",
        ("service/delivery/dkim.py", "/cryptography/"),
    ),
    ("UTM/unsubscribe links (service/render/links.py)", ("service/render/links.py", "/urllib/")),
    (
        "Templates: Jinja2 + Babel filters",
        ("/jinja2/", "/babel/", "/markupsafe/", "templates/", ".html", ".txt", "service/render/"),
    ),
    ("SMTP client (aiosmtplib, service/delivery/)", ("/aiosmtplib/", "service/delivery/")),
    ("Idempotency store (sqlite3)", ("service/stores/", "/sqlite3/")),
    ("Outcomes (Avro encode, service/outcomes/)", ("service/outcomes/",)),
    ("Avro decode (fastavro, service/events/)", ("/fastavro/", "service/events/")),
    (
        "Kafka client + consumer bookkeeping",
        ("/confluent_kafka/", "service/kafka/", "service/flow/lane.py"),
    ),
    ("Logging (structlog)", ("/structlog/", "/logging/", "service/logs.py")),
    ("Metrics (prometheus_client)", ("/prometheus_client/", "service/metrics.py")),
    ("Routing and policy", ("service/routing.py", "service/policy/")),
    ("Flow glue (service/flow/)", ("service/flow/",)),
    ("asyncio event loop, sockets", ("/asyncio/", "selectors.py", "/ssl.py", "socket.py")),
]
OTHER = "Other (startup, stdlib, threads)"


def bucket_of(frames: list[tuple[str, str, int]]) -> str:
    """`frames` leaf first: (function, file, line)."""
    for _func, file, line in frames:
        if file.endswith("service/render/renderer.py") and line in _INLINE_LINES:
            return BUCKETS[0][0]
        for name, patterns in BUCKETS:
            if any(p in file for p in patterns):
                return name
    return OTHER


_IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)",)
"""An executor thread blocked on its queue: waiting, though py-spy cannot tell."""


def from_pyspy(path: Path) -> tuple[Counter[str], Counter[str], int, Counter[str]]:
    """(samples per bucket, self samples per leaf function, total samples — all of the main
    (event loop) thread — and samples per other thread) of a py-spy `--threads --format raw`
    (folded stacks) file. Idle executor threads are left out."""
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        parts = stack.split(";")
        thread = "MainThread"
        if parts and parts[0].startswith("thread ("):
            root = parts.pop(0)
            thread = root.split(": ", 1)[1] if ": " in root else root
        if parts and parts[0].startswith("process "):
            parts.pop(0)
        frames = []
        for f in reversed(parts):
            m = _FRAME.match(f.strip())
            frames.append((m["func"], m["file"], int(m["line"] or 0)) if m else (f, "", 0))
        leaf = f"{frames[0][0]} ({_short(frames[0][1])}:{frames[0][2]})" if frames else "?"
        if leaf in _IDLE_LEAVES:
            continue
        if thread != "MainThread":
            threads[f"{thread}: {leaf}"] += n
            continue
        total += n
        buckets[bucket_of(frames)] += n
        leaves[leaf] += n
    return buckets, leaves, total, threads


_CPROFILE_WAITS = ("'poll' of 'select.epoll'", "'acquire' of '_thread.lock'", "'sleep'")


def from_cprofile(path: Path) -> tuple[Counter[str], Counter[str], int, Counter[str]]:
    """The same from a cProfile dump, by self time (main thread only, coarser: a C call is
    charged to its own pseudo-file, not to its caller)."""
    stats = pstats.Stats(str(path))
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    # The ignore: typeshed leaves out Stats.stats, the raw table pstats itself reads.
    for (file, line, func), (_, _, tt, _, callers) in stats.stats.items():  # type: ignore[attr-defined]
        us = int(tt * 1_000_000)
        if file == "~" and any(w in func for w in _CPROFILE_WAITS):
            continue  # the event loop waiting, not working
        if file == "~" and callers:  # a builtin: charge it to its biggest caller's file
            (cfile, cline, _), _ = max(callers.items(), key=lambda kv: kv[1][2])
            frames = [(func, cfile, cline)]
        else:
            frames = [(func, file, line)]
        buckets[bucket_of(frames)] += us
        leaves[f"{func} ({_short(file)}:{line})"] += us
        total += us
    return buckets, leaves, total, Counter()


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def summarise(
    path: Path, kind: str, messages: int, main_cpu_s: float, threads_cpu: dict[str, float]
) -> str:
    """Shares of the main (event loop) thread's samples, turned into CPU ms per message with
    that thread's measured CPU time; other threads' CPU is listed from /proc."""
    buckets, leaves, total, others = (from_pyspy if kind == "py-spy" else from_cprofile)(path)
    if not total:
        return "(empty profile)\n"
    per_msg_ms = main_cpu_s * 1000 / max(1, messages)
    cpu = ", ".join(f"{k} {v:.1f} s" for k, v in threads_cpu.items())
    lines = [
        f"profile: {kind}, {messages} messages; Herald CPU by thread over the window: {cpu}",
        f"main (event loop) thread: {per_msg_ms:.2f} ms CPU per message, split by its samples:",
        "",
        f"{'bucket':48} {'share':>7} {'ms/msg':>8}",
    ]
    for name, n in buckets.most_common():
        share = n / total
        lines.append(f"{name:48} {share:7.1%} {share * per_msg_ms:8.3f}")
    lines += ["", "main thread, top leaf functions (self samples):"]
    for name, n in leaves.most_common(25):
        lines.append(f"  {n / total:6.1%}  {name}")
    if others:
        lines += ["", "other threads, busiest leaves (samples relative to the main thread's):"]
        for name, n in others.most_common(8):
            lines.append(f"  {n / total:6.1%}  {name}")
    return "\n".join(lines) + "\n"
