"""Herald's load benchmark: `make bench`, or `python -m bench [--scenario ...] [--events N]`.

One run starts its own broker (deploy/kafka/broker.sh, free ports, temp data dir, 2 partitions
per topic) and an SMTP sink in its own process, then measures, on the same machine and under the
same load:

  sink         the sink alone, blasted with pipelined raw SMTP (it must not be the bottleneck)
  ceiling      (a) pre-rendered messages over the same pooled aiosmtplib connections, and
               consume + decode alone
  naive        (b) decode, plain Jinja2, css_inline per message, stdlib EmailMessage, one
               SMTP connection, sequential
  one / two    Herald, 1 or 2 instances in one group, draining a backlog of mixed events
  one-rw       `one` with a render worker (processing.render_workers=1): the second core
  paced        Herald at half the sustained rate of `one` (`paced2`: of `two`): latency
  priority     a backlog of optional mail draining while security events arrive steadily
  trace        the W3C trace context's CPU per record, against render+compose in one process
               (no broker: `--scenario trace` alone takes seconds)
  policy       the policy stage's CPU per notification (consent, suppression, caps, pace,
               claim) on tables of 100k rows, against render+compose in one process (no broker)
  soak         (not by default) one instance over --events (1M) events, kept topped up: RSS
  profile      (not by default) `one` again under py-spy (or cProfile): where the time goes

Herald's figures are printed as ratios to the naive baseline and the blast ceiling of the same
run, since absolute numbers move with whatever else the machine is doing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, cast

import confluent_kafka

from bench import policy as bench_policy
from bench import profile as prof
from bench import trace as bench_trace
from bench.events import EventFactory, produce_backlog, produce_paced, write_routing
from bench.procs import (
    ROOT,
    Broker,
    Herald,
    children,
    cpu_seconds,
    load_herald,
    machine,
    machine_busy_seconds,
    main_thread_sched,
    memory_mb,
    steal_seconds,
    thread_cpu,
    wait_group_settled,
)
from bench.sink import SinkProcess

DOMAIN = "example.com"
POLICY_DOMAINS = ("example.com", "example.org", "example.net")
"""The recipients' domains in the examples: `--policy loaded` paces each."""
DEFAULT_SCENARIOS = [
    "sink",
    "ceiling",
    "naive",
    "one",
    "one-rw",
    "two",
    "paced",
    "paced2",
    "priority",
    "trace",
    "policy",
]
ALL = [*DEFAULT_SCENARIOS, "soak", "profile"]


def log(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class ProcStats(TypedDict, total=False):
    """One process over a window: its CPU and peak RSS; for a Herald instance also its render
    workers, threads, scheduling, RSS samples and what its /metrics said."""

    cpu_s: float
    hwm_mib: float
    workers_cpu_s: float
    workers_hwm_mib: float
    threads: dict[str, float]
    main_runq_wait_share: float
    main_on_cpu_share: float
    vcpu_steal: float
    rss_samples: list[tuple[float, int, float, float]]
    paused_share: float
    in_flight_mean: float
    txn_ms_mean: float
    txns: int


@dataclass
class Row:
    scenario: str
    what: str
    n: int = 0
    seconds: float = 0.0
    """First to last SMTP acceptance (or the worker's own clock where nothing is sent)."""
    throughput: float = 0.0
    wall_throughput: float | None = None
    """N / (start of production → last acceptance), backlog scenarios."""
    latency_ms: dict[str, float] | None = None
    latency_note: str = ""
    procs: dict[str, ProcStats] = field(default_factory=dict)
    """Per process: cpu_s, hwm_mib (peak RSS), rss_* samples."""
    other_load: float | None = None
    """Busy cores not explained by the benchmark's own processes during the window."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    args: argparse.Namespace
    tmp: Path
    out: Path
    broker: Broker
    sink: SinkProcess
    routing: Path
    roles: dict[str, Any]
    loaded: Any
    rows: list[Row] = field(default_factory=list)
    seq: int = 0

    def prefix(self, name: str) -> str:
        self.seq += 1
        return f"b{self.seq}-{name}-{uuid.uuid4().hex[:4]}."


class Window:
    """CPU and memory of a set of processes over a measurement window, and the machine's."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.cpu0 = {k: cpu_seconds(p) for k, p in self.pids.items()}
        self.threads0 = {k: thread_cpu(p) for k, p in self.pids.items() if k.startswith("herald")}
        self.sched0 = {k: main_thread_sched(p) for k, p in self.pids.items() if k in self.threads0}
        self.kids0 = {
            k: {c: cpu_seconds(c) for c in children(p)}
            for k, p in self.pids.items()
            if k in self.threads0
        }
        self.steal0 = steal_seconds()
        self.busy0, self.total0 = machine_busy_seconds()
        self.t0 = time.monotonic()

    def close(self) -> tuple[dict[str, ProcStats], float]:
        busy1, _ = machine_busy_seconds()
        elapsed = time.monotonic() - self.t0
        procs: dict[str, ProcStats] = {}
        ours = 0.0
        for k, p in self.pids.items():
            cpu = cpu_seconds(p) - self.cpu0[k]
            ours += cpu
            procs[k] = {"cpu_s": round(cpu, 2), "hwm_mib": round(memory_mb(p)["hwm"], 1)}
            if k in self.kids0 and (kids := children(p)):
                # Render workers: their CPU is Herald's (and not "other" load on the machine).
                extra = sum(cpu_seconds(c) - self.kids0[k].get(c, 0.0) for c in kids)
                ours += extra
                procs[k]["cpu_s"] = round(cpu + extra, 2)
                procs[k]["workers_cpu_s"] = round(extra, 2)
                procs[k]["workers_hwm_mib"] = round(max(memory_mb(c)["hwm"] for c in kids), 1)
            if k in self.threads0:
                t1 = thread_cpu(p)
                procs[k]["threads"] = {
                    g: round(t1[g] - self.threads0[k].get(g, 0.0), 2) for g in t1
                }
                on, wait = main_thread_sched(p)
                procs[k]["main_runq_wait_share"] = round(
                    (wait - self.sched0[k][1]) / max(1e-9, elapsed), 2
                )
                procs[k]["main_on_cpu_share"] = round(
                    (on - self.sched0[k][0]) / max(1e-9, elapsed), 2
                )
        self.steal = round((steal_seconds() - self.steal0) / max(1e-9, elapsed), 2)
        for v in procs.values():
            if "threads" in v:
                v["vcpu_steal"] = self.steal  # cores' worth taken by the hypervisor
        ncpu = os.cpu_count() or 1
        other = max(0.0, (busy1 - self.busy0) - ours) / max(1e-9, elapsed)
        other = min(other, float(ncpu))
        return procs, round(other, 2)


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The `q` quantile of a histogram's cumulative buckets, interpolated within its bucket
    as Prometheus' `histogram_quantile` does: an estimate, as fine as the buckets."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] == 0:
        return None
    rank = q * buckets[bounds[-1]]
    low, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == math.inf:
                return low
            return low + (bound - low) * (rank - below) / (count - below)
        low, below = bound, count
    return None


_SPLIT = {
    "consume_delay": "herald_consume_delay_seconds",
    "event_to_accepted": "herald_event_to_accepted_seconds",
}
"""Herald's own histograms that split a paced row's latency: before Herald's loop took the record,
and in all."""


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    v = sorted(values)

    def q(p: float) -> float:
        return v[min(len(v) - 1, max(0, math.ceil(p * len(v)) - 1))]  # nearest rank

    return {
        "p50": round(q(0.50), 1),
        "p95": round(q(0.95), 1),
        "p99": round(q(0.99), 1),
        "max": round(v[-1], 1),
        "mean": round(statistics.fmean(v), 1),
    }


def rate(times: list[float]) -> tuple[float, float]:
    """(messages/s from first to last, seconds) over acceptance times."""
    if len(times) < 2:
        return 0.0, 0.0
    span = max(times) - min(times)
    return ((len(times) - 1) / span if span else 0.0), span


# --- reference points -------------------------------------------------------------------------


def worker(ctx: Context, *argv: str) -> tuple[dict[str, Any], dict[str, ProcStats], float]:
    """Run `python -m bench.workers ...`; returns its JSON, CPU/memory of it (whole process,
    from wait4's rusage), the sink and the broker over its run, and the other load."""
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.workers", *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")},
    )
    win = Window({"sink": ctx.sink.pid, "broker": ctx.broker.pid})
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stdout is not None
    out = proc.stdout.read()
    procs, other = win.close()
    # The worker's CPU is not in the window's accounting (it is gone): take it out of "other".
    cpu = usage.ru_utime + usage.ru_stime
    other = round(max(0.0, other - cpu / max(1e-9, time.monotonic() - win.t0)), 2)
    procs = {
        "worker": {"cpu_s": round(cpu, 2), "hwm_mib": round(usage.ru_maxrss / 1024, 1)},
        **procs,
    }
    if proc.returncode != 0:
        raise RuntimeError(f"worker {argv[0]} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), procs, other


def scenario_sink(ctx: Context) -> None:
    log("sink alone: raw pipelined SMTP, 8 connections, 20 kB messages, 6 s")
    res, procs, other = worker(ctx, "raw-blast", "--port", str(ctx.sink.port), "--seconds", "6")
    recs = ctx.sink.dump(ctx.tmp / "sink.tsv")
    thr, span = rate([t for t, _ in recs])
    ctx.rows.append(
        Row(
            "sink",
            "SMTP sink alone (raw pipelined client)",
            len(recs),
            span,
            thr,
            procs=procs,
            other_load=other,
            extra=res,
        )
    )


def scenario_blast(ctx: Context, n: int) -> Row:
    log(
        f"ceiling (a): {n} pre-rendered messages over {ctx.args.pool} pooled aiosmtplib connections"
    )
    res, procs, other = worker(
        ctx,
        "blast",
        "--port",
        str(ctx.sink.port),
        "--routing",
        str(ctx.routing),
        "--types",
        ",".join(ctx.roles["mixed"]),
        "--n",
        str(n),
        "--pool",
        str(ctx.args.pool),
    )
    recs = ctx.sink.dump(ctx.tmp / "sink.tsv")
    thr, span = rate([t for t, _ in recs])
    row = Row(
        "ceiling-smtp",
        f"pre-rendered blast, pool {ctx.args.pool} (ceiling a)",
        len(recs),
        span,
        thr,
        procs=procs,
        other_load=other,
        extra=res,
    )
    ctx.rows.append(row)
    return row


def produce_reference(ctx: Context, n: int) -> tuple[str, list[str]]:
    prefix = ctx.prefix("ref")
    factory = EventFactory(ctx.loaded, prefix, ctx.roles["mixed"], DOMAIN)
    create_topics(ctx, factory.topics)
    secs = produce_backlog(ctx.broker.bootstrap, factory, n)
    log(f"reference data: {n} events produced in {secs:.1f} s ({n / secs:,.0f}/s)")
    return prefix, factory.topics


def _reference_args(ctx: Context, prefix: str, topics: list[str], n: int) -> list[str]:
    """Where the reference workers find the events produced for them."""
    return [
        "--bootstrap",
        ctx.broker.bootstrap,
        "--routing",
        str(ctx.routing),
        "--prefix",
        prefix,
        "--topics",
        ",".join(topics),
        "--n",
        str(n),
    ]


def scenario_decode(ctx: Context, prefix: str, topics: list[str], n: int) -> None:
    log(f"ceiling (a): consume + decode {n} records")
    res, procs, other = worker(
        ctx,
        "decode",
        *_reference_args(ctx, prefix, topics, n),
        "--seconds",
        "60",
    )
    thr = res["decoded"] / res["seconds"] if res["seconds"] else 0.0
    procs.pop("sink", None)
    ctx.rows.append(
        Row(
            "ceiling-decode",
            "consume + decode only (ceiling a)",
            res["decoded"],
            res["seconds"],
            thr,
            procs=procs,
            other_load=other,
            extra=res,
        )
    )


def scenario_naive(ctx: Context, prefix: str, topics: list[str], n: int) -> Row:
    log(f"naive baseline (b): up to {n} events or {ctx.args.naive_s:.0f} s")
    res, procs, other = worker(
        ctx,
        "naive",
        *_reference_args(ctx, prefix, topics, n),
        "--seconds",
        str(ctx.args.naive_s),
        "--port",
        str(ctx.sink.port),
    )
    recs = ctx.sink.dump(ctx.tmp / "sink.tsv")
    thr, span = rate([t for t, _ in recs])
    row = Row(
        "naive",
        "naive: EmailMessage, 1 connection, inline per msg (baseline b)",
        len(recs),
        span,
        thr,
        procs=procs,
        other_load=other,
        extra=res,
    )
    ctx.rows.append(row)
    return row


# --- Herald -----------------------------------------------------------------------------------


def create_topics(ctx: Context, topics: list[str]) -> None:
    from service.kafka.admin import ensure_topics

    ensure_topics(
        {"bootstrap.servers": ctx.broker.bootstrap}, topics, partitions=ctx.args.partitions
    )


def count_outcomes(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 60
) -> Counter[str]:
    from service.outcomes.records import decode_outcome

    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-outcomes-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([topic])
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + timeout_s
    import service.app  # noqa: F401  (the store below)

    store = _STORE[0]
    try:
        while sum(statuses.values()) < expected and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    # An outcome record always has a value.
                    statuses[decode_outcome(cast(bytes, m.value()), store)["status"]] += 1
    finally:
        c.close()
    return statuses


_STORE: list[Any] = []


@dataclass
class HeraldRun:
    name: str
    instances: int
    backlog: int = 0
    backlog_types: list[str] = field(default_factory=list)
    paced_rate: float = 0.0
    paced_s: float = 0.0
    paced_types: list[str] = field(default_factory=list)
    paced_until_backlog_done: bool = False
    topup: int = 0
    """Soak: keep at most this many events ahead of the sink until `backlog` are produced."""
    profile: str | None = None
    deadline_s: float = 0.0
    """Stop watching after this long and report on what arrived (0: wait for everything)."""
    env: dict[str, str] = field(default_factory=dict)
    """Settings of this scenario's instances (after --herald-env)."""


def run_herald(ctx: Context, spec: HeraldRun) -> dict[str, Any]:
    args = ctx.args
    prefix = ctx.prefix(spec.name)
    bulk = EventFactory(ctx.loaded, prefix, spec.backlog_types or ctx.roles["mixed"], DOMAIN)
    steady = EventFactory(ctx.loaded, prefix, spec.paced_types or ctx.roles["mixed"], DOMAIN)
    create_topics(ctx, sorted({*bulk.topics, *steady.topics}))
    heralds = []
    for i in range(spec.instances):
        env = Herald.environment(
            bootstrap=ctx.broker.bootstrap,
            prefix=prefix,
            group="herald",
            instance=str(i),
            smtp_port=ctx.sink.port,
            routing=ctx.routing,
            workdir=ctx.tmp,
            pool=args.pool,
        )
        for setting in args.herald_env:
            name, sep, value = setting.partition("=")
            if not sep or not name.startswith("HERALD_"):
                raise SystemExit(f"--herald-env wants HERALD_X=V, not {setting!r}")
            env[name] = value
        env.update(spec.env)
        heralds.append(
            Herald(
                f"herald-{i}",
                env,
                ctx.out / f"{prefix}herald-{i}.log",
                profile=spec.profile if i == 0 else None,
            )
        )
    produced_before = 0
    if spec.backlog and not spec.topup and spec.paced_rate and spec.paced_until_backlog_done:
        # Priority: the backlog is there before Herald starts.
        produced_before = spec.backlog
        secs = produce_backlog(ctx.broker.bootstrap, bulk, spec.backlog)
        log(f"{spec.name}: backlog of {spec.backlog} produced in {secs:.1f} s")
    for h in heralds:
        h.start()
    for h in heralds:
        h.wait_ready()
    members = sum(h.lanes() for h in heralds)
    settled = wait_group_settled(ctx.broker.bootstrap, f"{prefix}herald", members)
    log(f"{spec.name}: group of {members} members settled {settled:.1f} s after ready")
    pids = {h.name: h.pid for h in heralds}
    win = Window({**pids, "sink": ctx.sink.pid, "broker": ctx.broker.pid, "bench": os.getpid()})
    t_start = time.time()
    state = {"stop": False, "paced_done": not spec.paced_rate, "produced": 0}

    def paced_thread() -> None:
        try:
            state["produced"] = produce_paced(
                ctx.broker.bootstrap,
                steady,
                spec.paced_rate,
                spec.paced_s if not spec.paced_until_backlog_done else 24 * 3600,
                stop=lambda: state["stop"],
            )
        finally:
            state["paced_done"] = True

    if spec.backlog and not produced_before and not spec.topup:
        secs = produce_backlog(ctx.broker.bootstrap, bulk, spec.backlog)
        log(f"{spec.name}: {spec.backlog} events produced in {secs:.1f} s while Herald drains")
    topup_thread = None
    if spec.topup:

        def topup() -> None:
            from bench.events import _produce, producer

            p = producer(ctx.broker.bootstrap)
            made = 0
            while made < spec.backlog and not state["stop"]:
                ahead = made - state.get("accepted", 0)
                if ahead < spec.topup:
                    for _ in range(min(spec.topup - ahead, spec.backlog - made, 5000)):
                        _produce(p, *bulk.make())
                        made += 1
                    p.poll(0)
                else:
                    p.poll(0.2)
            p.flush(60)

        topup_thread = threading.Thread(target=topup, daemon=True)
        topup_thread.start()
    thread = None
    if spec.paced_rate:
        thread = threading.Thread(target=paced_thread, daemon=True)
        thread.start()
    # Watch the sink until every mail has arrived.
    rss: dict[str, list[tuple[float, int, float, float]]] = {h.name: [] for h in heralds}
    gauges: dict[str, list[dict[str, float]]] = {h.name: [] for h in heralds}
    last_n, last_change = -1, time.monotonic()
    next_sample = 0.0
    error = None
    while True:
        n = ctx.sink.count()
        state["accepted"] = n
        now = time.monotonic()
        if n != last_n:
            last_n, last_change = n, now
        if now >= next_sample:
            for h in heralds:
                kids = sum(memory_mb(c)["rss"] for c in children(h.pid))  # render workers
                rss[h.name].append(
                    (round(now - win.t0, 1), n, round(memory_mb(h.pid)["rss"], 1), round(kids, 1))
                )
                gauges[h.name].append(h.gauges())
            next_sample = now + 1.0
        if spec.paced_until_backlog_done and n >= produced_before:
            state["stop"] = True
        expected = len(bulk.sent) + len(steady.sent) if state["paced_done"] else None
        if spec.topup:
            expected = spec.backlog if len(bulk.sent) >= spec.backlog else None
        if expected is not None and n >= expected:
            break
        if spec.deadline_s and now - win.t0 > spec.deadline_s:
            error = f"stopped at the {spec.deadline_s:.0f} s deadline with {n} messages"
            log(f"{spec.name}: {error} (results cover what arrived)")
            break
        if now - last_change > args.stall_s:
            error = f"no progress for {args.stall_s:.0f} s at {n} messages"
            log(f"{spec.name}: {error}")
            break
        if any(h.proc and h.proc.poll() is not None for h in heralds):
            error = "a Herald instance exited"
            log(f"{spec.name}: {error}")
            break
        time.sleep(0.1 if n < 1000 else 0.25)
    state["stop"] = True
    procs, other = win.close()
    for h in heralds:
        samples = rss[h.name]
        procs[h.name]["rss_samples"] = samples
        g = [x for x in gauges[h.name] if x]
        if g:  # Herald's own view, sampled once a second
            procs[h.name]["paused_share"] = round(statistics.fmean(x["paused"] for x in g), 2)
            procs[h.name]["in_flight_mean"] = round(statistics.fmean(x["in_flight"] for x in g), 1)
            t = [x for x in g if "txns" in x]
            if len(t) > 1 and t[-1]["txns"] > t[0]["txns"]:  # over the window, not start-up
                procs[h.name]["txn_ms_mean"] = round(
                    1000 * (t[-1]["txn_s"] - t[0]["txn_s"]) / (t[-1]["txns"] - t[0]["txns"]), 1
                )
                procs[h.name]["txns"] = int(t[-1]["txns"] - t[0]["txns"])
    histograms: dict[str, dict[float, float]] = {}
    for metric in _SPLIT.values():  # read before the instances stop, summed over them
        merged = histograms.setdefault(metric, {})
        for h in heralds:
            for bound, count in h.histogram(metric).items():
                merged[bound] = merged.get(bound, 0.0) + count
    codes = [h.stop() for h in heralds]
    if thread:
        thread.join(timeout=30)
    if topup_thread:
        topup_thread.join(timeout=30)
    recs = ctx.sink.dump(ctx.tmp / "sink.tsv")
    expected_mails = len(bulk.sent) + len(steady.sent)
    statuses = count_outcomes(
        ctx.broker.bootstrap,
        prefix + "notification.outcomes",
        expected_mails,
        timeout_s=(30 + expected_mails / 15_000) if not error else 5,  # ~20k outcomes/s read
    )
    log(
        f"{spec.name}: {len(recs)}/{expected_mails} mails at the sink, outcomes {dict(statuses)}, "
        f"exit codes {codes}"
    )
    return {
        "prefix": prefix,
        "records": recs,
        "sent": {**bulk.sent, **steady.sent},
        "bulk_ids": set(bulk.sent),
        "steady_ids": set(steady.sent),
        "t_start": t_start,
        "procs": procs,
        "other": other,
        "statuses": dict(statuses),
        "expected": expected_mails,
        "error": error,
        "exit_codes": codes,
        "histograms": histograms,
    }


def _latencies(
    recs: list[tuple[float, str]],
    sent: dict[str, Any],
    ids: set[str] | None = None,
    until: float | None = None,
) -> list[float]:
    out = []
    for t, mid in recs:
        s = sent.get(mid)
        if s is None or (ids is not None and mid not in ids):
            continue
        if until is not None and s.occurred_ms / 1000 > until:
            continue
        out.append(t * 1000 - s.occurred_ms)
    return out


def _herald_row(
    ctx: Context,
    scenario: str,
    what: str,
    res: dict[str, Any],
    *,
    paced: bool,
    ids: set[str] | None = None,
) -> Row:
    recs = [r for r in res["records"] if ids is None or r[1] in ids]
    times = [t for t, _ in recs]
    thr, span = rate(times)
    lat = percentiles(_latencies(recs, res["sent"]))
    row = Row(
        scenario,
        what,
        len(recs),
        span,
        thr,
        procs=res["procs"],
        other_load=res["other"],
        latency_ms=lat,
        latency_note="paced" if paced else "backlog (queueing, not latency)",
    )
    if times and not paced:
        row.wall_throughput = len(recs) / (max(times) - res["t_start"])
    row.extra = {
        "statuses": res["statuses"],
        "expected": res["expected"],
        "error": res["error"],
        "exit_codes": res["exit_codes"],
        "prefix": res["prefix"],
    }
    ctx.rows.append(row)
    return row


def scenario_throughput(
    ctx: Context, name: str, instances: int, n: int, env: dict[str, str] | None = None
) -> Row:
    log(
        f"{name}: Herald x{instances}{' ' + str(env) if env else ''}, backlog of {n} mixed "
        f"events ({', '.join(ctx.roles['mixed'])})"
    )
    spec = HeraldRun(name, instances, backlog=n, deadline_s=ctx.args.max_s, env=env or {})
    res = run_herald(ctx, spec)
    return _herald_row(ctx, name, f"Herald x{instances}, backlog drain", res, paced=False)


def scenario_paced(ctx: Context, name: str, instances: int, rate_: float) -> Row:
    log(f"{name}: Herald x{instances}, paced at {rate_:.0f}/s for {ctx.args.paced_s:.0f} s")
    res = run_herald(ctx, HeraldRun(name, instances, paced_rate=rate_, paced_s=ctx.args.paced_s))
    row = _herald_row(ctx, name, f"Herald x{instances}, paced at {rate_:.0f}/s", res, paced=True)
    row.extra["target_rate"] = rate_
    split = {
        key: {
            f"p{round(q * 100)}": round(1000 * v, 1)
            for q in (0.5, 0.99)
            if (v := bucket_quantile(res["histograms"][metric], q)) is not None
        }
        for key, metric in _SPLIT.items()
    }
    row.extra["latency_split_ms"] = split
    log(
        f"{name}: Herald's histograms (bucket estimates): before Herald's loop took the record "
        f"{split['consume_delay']} ms, event to accepted {split['event_to_accepted']} ms"
    )
    row.extra["tail"] = _tail(res["records"], res["sent"])
    if row.extra["tail"]:
        log(f"{name}: mails over 100 ms, by second after the first event: {row.extra['tail']}")
    return row


def _tail(recs: list[tuple[float, str]], sent: dict[str, Any]) -> dict[int, int]:
    """How many mails took over 100 ms, per second of the run: one stall at start-up and a
    spread of small ones call for different fixes."""
    pairs = [
        (sent[mid].occurred_ms, t * 1000 - sent[mid].occurred_ms) for t, mid in recs if mid in sent
    ]
    if not pairs:
        return {}
    t0 = min(o for o, _ in pairs)
    slow = Counter(int((o - t0) / 1000) for o, lat in pairs if lat > 100)
    return dict(sorted(slow.items()))


def scenario_priority(ctx: Context, backlog: int) -> None:
    roles = ctx.roles
    if not roles["optional"] or not roles["security"]:
        log("priority: skipped, the routing table has no optional or no security route")
        return
    r = ctx.args.security_rate
    log(
        f"priority: backlog of {backlog} optional mails ({', '.join(roles['optional'])}) "
        f"draining on Herald x{ctx.args.priority_instances}, security events "
        f"({', '.join(roles['security'])}) at {r:.0f}/s"
    )
    res = run_herald(
        ctx,
        HeraldRun(
            "priority",
            ctx.args.priority_instances,
            backlog=backlog,
            backlog_types=roles["optional"],
            paced_rate=r,
            paced_types=roles["security"],
            paced_until_backlog_done=True,
        ),
    )
    bulk = _herald_row(
        ctx, "priority-bulk", "optional backlog draining", res, paced=False, ids=res["bulk_ids"]
    )
    bulk_end = max((t for t, m in res["records"] if m in res["bulk_ids"]), default=None)
    sec = _herald_row(
        ctx,
        "priority-sec",
        f"security events at {r:.0f}/s during the drain",
        res,
        paced=True,
        ids=res["steady_ids"],
    )
    during = _latencies(res["records"], res["sent"], res["steady_ids"], until=bulk_end)
    sec.latency_ms = percentiles(during)
    sec.latency_note = "security events that arrived while the backlog was draining"
    sec.extra["during_drain"] = len(during)
    bulk.extra["backlog"] = backlog


def scenario_soak(ctx: Context, n: int) -> None:
    log(f"soak: Herald x1 over {n} events, topped up to stay {ctx.args.soak_ahead} ahead")
    res = run_herald(ctx, HeraldRun("soak", 1, backlog=n, topup=ctx.args.soak_ahead))
    _herald_row(ctx, "soak", f"Herald x1, {n} events, RSS over time", res, paced=False)


def find_py_spy() -> str | None:
    for cand in (
        shutil.which("py-spy"),
        str(Path(sys.executable).parent / "py-spy"),
        "/tmp/pyspy/bin/py-spy",
    ):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def scenario_profile(ctx: Context, n: int) -> None:
    spy = None if ctx.args.cprofile else find_py_spy()
    out = ctx.out / f"profile-{time.strftime('%Y%m%d-%H%M%S')}"
    if spy:
        kind, prof_spec, data = "py-spy", f"py-spy:{spy}|{out}.folded", out.with_suffix(".folded")
    else:
        kind, prof_spec, data = "cprofile", f"cprofile:{out}.pstats", out.with_suffix(".pstats")
    log(f"profile: Herald x1 under {kind}, backlog of {n}")
    res = run_herald(ctx, HeraldRun("profile", 1, backlog=n, profile=prof_spec))
    row = _herald_row(ctx, "profile", f"Herald x1 under {kind}", res, paced=False)
    threads = row.procs["herald-0"]["threads"]
    text = prof.summarise(data, kind, row.n, threads["main"], threads)
    (out.with_suffix(".txt")).write_text(text)
    row.extra["profile"] = str(out.with_suffix(".txt"))
    sys.stdout.write("\n" + text + "\n")


# --- report -----------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[Row], naive: float | None, ceiling: float | None) -> str:
    head = (
        f"{'scenario':15} {'N':>7} {'msg/s':>7} {'xnaive':>7} {'%ceil':>6} "
        f"{'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'RSS MiB':>9} {'CPU s':>11} "
        f"{'ms/msg':>7} {'other':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lat = r.latency_ms or {}
        keys = ("sink",) if r.scenario == "sink" else ("herald", "worker")
        herald = {k: v for k, v in r.procs.items() if k.startswith(keys)}
        rss = "/".join(f"{v['hwm_mib']:.0f}" for v in herald.values()) or "-"
        cpu = "/".join(f"{v['cpu_s']:.1f}" for v in herald.values()) or "-"
        per = sum(v["cpu_s"] for v in herald.values()) * 1000 / r.n if r.n and herald else None
        rated = (
            r.scenario not in ("sink",)
            and r.latency_note != "paced"
            and not (r.scenario.endswith("-sec"))
        )
        if r.scenario.endswith("-sec"):
            per = None  # the process's CPU went mostly to the backlog
        lines.append(
            f"{r.scenario:15} {r.n:>7} {_fmt(r.throughput):>7} "
            f"{_fmt(r.throughput / naive if naive and rated else None, '.2f'):>7} "
            f"{_fmt(r.throughput / ceiling * 100 if ceiling and rated else None, '.0f'):>6} "
            f"{_fmt(lat.get('p50'), '.0f'):>7} {_fmt(lat.get('p95'), '.0f'):>7} "
            f"{_fmt(lat.get('p99'), '.0f'):>7} {_fmt(lat.get('max'), '.0f'):>7} "
            f"{rss:>9} {cpu:>11} {_fmt(per, '.2f'):>7} {_fmt(r.other_load, '.2f'):>5}"
        )
    return "\n".join(lines)


def goals(rows: dict[str, Row], naive: float | None, ceiling: float | None) -> list[str]:
    out = []

    def check(label: str, ok: bool | None, detail: str) -> None:
        mark = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        out.append(f"  [{mark}] {label}: {detail}")

    two = rows.get("two")
    ones = [r for r in (rows.get("one"), rows.get("one-rw")) if r]
    one = max(ones, key=lambda r: r.throughput) if ones else None
    if two:
        check(">= 2,000/s with two instances", two.throughput >= 2000, f"{two.throughput:,.0f}/s")
    if one:
        check(
            ">= 1,000/s with one instance",
            one.throughput >= 1000,
            f"{one.throughput:,.0f}/s ({one.scenario})",
        )
    best = two or one
    if best and naive:
        check(
            ">= 5x the naive baseline",
            best.throughput >= 5 * naive,
            f"{best.throughput / naive:.2f}x ({best.scenario})",
        )
    if best and ceiling:
        check(
            ">= 80% of the blast ceiling",
            best.throughput >= 0.8 * ceiling,
            f"{best.throughput / ceiling:.0%} ({best.scenario})",
        )
    for name in ("paced", "paced2"):
        r = rows.get(name)
        if r and r.latency_ms:
            check(
                f"p99 <= 100 ms at half the sustained rate ({name})",
                r.latency_ms["p99"] <= 100,
                f"p99 {r.latency_ms['p99']:.0f} ms at {r.extra.get('target_rate', 0):.0f}/s",
            )
    sec = rows.get("priority-sec")
    if sec and sec.latency_ms:
        check(
            "security p99 <= 250 ms while the backlog drains",
            sec.latency_ms["p99"] <= 250,
            f"p99 {sec.latency_ms['p99']:.0f} ms",
        )
    soak = rows.get("soak")
    if soak:
        s = soak.procs.get("herald-0", {}).get("rss_samples") or []
        if len(s) > 4:
            a, b = s[len(s) // 10][2], s[-1][2]
            check("RSS flat over the soak", b <= a * 1.1 + 20, f"{a:.0f} -> {b:.0f} MiB")
            wa, wb = s[len(s) // 10][3], s[-1][3]
            if wa:
                check(
                    "render workers' RSS flat over the soak",
                    wb <= wa * 1.1 + 20,
                    f"{wa:.0f} -> {wb:.0f} MiB",
                )
    return out


def _dkim_rows(blast: Row) -> list[tuple[str, float]]:
    """DKIM signing's ms per mail by key, as the blast worker measured it."""
    keys = [
        ("RSA-2048", "dkim_sign_ms"),
        ("RSA-4096", "dkim_rsa4096_ms"),
        ("Ed25519", "dkim_ed25519_ms"),
    ]
    return [(label, blast.extra[k]) for label, k in keys if k in blast.extra]


def main(argv: list[str] | None = None) -> int:
    p: argparse.ArgumentParser | ProcStats  # below, `p` is a process's stats too
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenario",
        default="default",
        help=f"comma-separated, from {ALL}; `default` = {','.join(DEFAULT_SCENARIOS)}; "
        "`all` adds soak and profile",
    )
    p.add_argument(
        "--events",
        type=int,
        default=None,
        help="events per throughput scenario (default: adaptive, about --target-s "
        "seconds of work, capped at 100k; soak: 1M)",
    )
    p.add_argument(
        "--target-s",
        type=float,
        default=40,
        help="adaptive sizing: aim for this many seconds per backlog scenario",
    )
    p.add_argument(
        "--backlog",
        type=int,
        default=None,
        help="priority scenario backlog (default: adaptive, about 1.5 x --target-s "
        "of drain, capped at 100k)",
    )
    p.add_argument("--security-rate", type=float, default=20.0)
    p.add_argument("--priority-instances", type=int, default=1)
    p.add_argument("--paced-s", type=float, default=30.0)
    p.add_argument("--naive-s", type=float, default=20.0)
    p.add_argument("--blast-s", type=float, default=10.0)
    p.add_argument(
        "--paced-rate",
        type=float,
        default=None,
        help="rate of the paced scenarios (default: half the sustained rate measured)",
    )
    p.add_argument("--pool", type=int, default=8, help="SMTP connections per instance")
    p.add_argument(
        "--herald-env",
        action="append",
        default=[],
        metavar="HERALD_X=V",
        help="extra setting for every Herald instance (repeatable), for tuning runs",
    )
    p.add_argument(
        "--policy",
        choices=["default", "loaded"],
        default="default",
        help="the policy stage as configured: `default` (consent and suppression lookups); "
        "`loaded` adds a cap on every optional category and relay and domain paces, none "
        "of them binding, so every mail pays for each rule",
    )
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--stall-s", type=float, default=60.0)
    p.add_argument(
        "--max-s",
        type=float,
        default=120.0,
        help="backlog scenarios stop after this long and report what arrived (0: no limit)",
    )
    p.add_argument("--soak-ahead", type=int, default=20_000)
    p.add_argument("--cprofile", action="store_true", help="profile with cProfile, not py-spy")
    p.add_argument("--out", type=Path, default=ROOT / "var" / "bench")
    args = p.parse_args(argv)
    wanted = (
        DEFAULT_SCENARIOS
        if args.scenario == "default"
        else ALL
        if args.scenario == "all"
        else args.scenario.split(",")
    )
    unknown = set(wanted) - set(ALL)
    if unknown:
        p.error(f"unknown scenario(s) {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = machine()
    log(
        f"machine: {info['nproc']} x {info['cpu']}, {info['memory_gib']} GiB, Python "
        f"{info['python']}, librdkafka {info['librdkafka']}, Kafka {info['kafka']}, "
        f"load average {', '.join(f'{x:.2f}' for x in info['loadavg_at_start'])}"
    )
    tmp = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    routing = tmp / "routing.yaml"
    roles = write_routing(routing, caps=args.policy == "loaded")
    if args.policy == "loaded":
        unbound = '{"rate": "1000000/s", "burst": 1000000}'
        domains = ", ".join(f'"{d}": {unbound}' for d in POLICY_DOMAINS)
        args.herald_env += [f"HERALD_PACE__RELAY={unbound}", f"HERALD_PACE__DOMAINS={{{domains}}}"]
    if roles["bench_only_route"]:
        log(
            f"the routing table has no optional mail yet: the priority scenario routes "
            f"{roles['bench_only_route']} as `activity` (bench-only route)"
        )
    loaded = load_herald(routing)
    _STORE.append(loaded.store)
    stage_lines = []
    if "trace" in wanted:
        stage_lines.append(bench_trace.summary(bench_trace.measure(loaded, roles["mixed"])))
        log(stage_lines[-1])
    if "policy" in wanted:
        stage_lines.append(bench_policy.summary(bench_policy.measure(loaded, roles["mixed"])))
        log(stage_lines[-1])
    if set(wanted) <= {"trace", "policy"}:
        sys.stdout.write("".join(line + "\n" for line in stage_lines))
        return 0
    broker = Broker(tmp / "kafka", partitions=args.partitions)
    log(f"starting the broker on {broker.bootstrap} ...")
    broker.start()
    sink = SinkProcess()
    log(f"sink on 127.0.0.1:{sink.port} (pid {sink.pid})")
    ctx = Context(args, tmp, args.out, broker, sink, routing, roles, loaded)
    naive = ceiling = None
    by: dict[str, Row] = {}
    try:
        if "sink" in wanted:
            scenario_sink(ctx)
        # The ceiling's pre-rendering measures render+compose cost, which sizes the rest.
        blast = scenario_blast(ctx, 1_000_000)  # bounded by --blast-s
        ceiling = blast.throughput
        render_ms = blast.extra["render_compose_ms"]
        for label, dkim_ms in _dkim_rows(blast):
            log(
                f"DKIM signing ({label}) {dkim_ms:.2f} ms/msg = {dkim_ms / render_ms:.2f}x "
                f"render+compose ({render_ms:.2f} ms/msg) of this run"
            )
        if args.events:
            n_one = n_two = args.events
        else:
            est = 1000 / render_ms * 0.45  # Herald does more than render+compose per mail
            n_one = int(min(100_000, max(2_000, est * args.target_s)) // 1000 * 1000)
            n_two = int(min(100_000, n_one * 1.6) // 1000 * 1000)
            log(
                f"render+compose {render_ms:.2f} ms/msg: N = {n_one} (one), {n_two} (two), "
                f"sized for ~{args.target_s:.0f} s each (pass --events N to fix N)"
            )
        if "ceiling" in wanted or "naive" in wanted:
            prefix, topics = produce_reference(ctx, n_two)
            if "ceiling" in wanted:
                scenario_decode(ctx, prefix, topics, n_two)
            naive = scenario_naive(ctx, prefix, topics, n_two).throughput
        workers = {"HERALD_PROCESSING__RENDER_WORKERS": "1"}
        for name, inst, n, env in (
            ("one", 1, n_one, {}),
            ("one-rw", 1, n_one, workers),  # one instance, rendering in a second process
            ("two", 2, n_two, {}),
        ):
            needed = (
                name in wanted
                or (name == "one" and "paced" in wanted)
                or (name == "two" and "paced2" in wanted)
            )
            if needed:
                by[name] = scenario_throughput(ctx, name, inst, n, env)
        base: str | Row | None  # a scenario's name, then the row of `one`
        for name, base, inst in (("paced", "one", 1), ("paced2", "two", 2)):
            if name in wanted and (args.paced_rate or (base in by and by[base].throughput)):
                r = args.paced_rate or by[base].throughput / 2
                by[name] = scenario_paced(ctx, name, inst, r)
        if "priority" in wanted:
            base = by.get("one")
            drain = base.throughput if base else 1000 / render_ms * 0.6
            backlog = args.backlog or int(min(100_000, drain * args.target_s * 1.5) // 1000 * 1000)
            scenario_priority(ctx, max(1000, backlog))
        if "soak" in wanted:
            scenario_soak(ctx, args.events or 1_000_000)
        if "profile" in wanted:
            scenario_profile(ctx, n_one)
    finally:
        sink.close()
        log("stopping the broker ...")
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    by.update({r.scenario: r for r in ctx.rows})
    elapsed = time.monotonic() - started
    report = [
        "",
        f"Herald benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {info['nproc']} x "
        f"{info['cpu']}, load average at start {info['loadavg_at_start'][0]:.2f}, took "
        f"{elapsed / 60:.1f} min",
        "msg/s: first to last SMTP acceptance at the sink; xnaive/%ceil: ratio to the naive "
        "baseline / to the pre-rendered blast ceiling of this run",
        "latency (ms): event occurred_at -> SMTP 250 after DATA, only meaningful in paced rows "
        "(backlog rows measure queueing); RSS: peak (VmHWM) per process; CPU s over the window; "
        "other: busy cores not used by the benchmark's processes (other work on the machine)",
        "",
        table(ctx.rows, naive, ceiling),
        "",
        *stage_lines,
    ]
    for r in ctx.rows:
        split = [
            f"{k} "
            + ", ".join(f"{g} {v:.1f}" for g, v in p["threads"].items())
            + (f", render workers {p['workers_cpu_s']:.1f}" if "workers_cpu_s" in p else "")
            for k, p in r.procs.items()
            if "threads" in p
        ]
        for k, p in r.procs.items():
            if "paused_share" in p and not r.scenario.endswith("-sec"):
                report.append(
                    f"  {r.scenario}: {k} consumption paused {p['paused_share']:.0%} of "
                    f"samples, mean in flight {p['in_flight_mean']:.0f}"
                    + (
                        f", {p['txns']} transactions of {p['txn_ms_mean']:.0f} ms on average"
                        if "txns" in p
                        else ""
                    )
                    + " (Herald's /metrics); "
                    f"event-loop thread on a CPU {p['main_on_cpu_share']:.0%} of the time, "
                    f"runnable but waiting for a CPU {p['main_runq_wait_share']:.0%}; "
                    f"vCPU steal {p['vcpu_steal']:.2f} cores"
                )
        if split and not r.scenario.endswith("-sec"):
            mains = [p["threads"]["main"] for p in r.procs.values() if "threads" in p]
            per = sum(mains) * 1000 / r.n if r.n else 0
            cap = (
                f"; event-loop thread {per:.2f} ms CPU/msg = ~{1000 / per:,.0f} msg/s per free core"
                if per
                else ""
            )
            report.append(
                f"  {r.scenario}: CPU s by thread: {'; '.join(split)}; "
                f"broker {r.procs.get('broker', {}).get('cpu_s', 0):.1f}, "
                f"sink {r.procs.get('sink', {}).get('cpu_s', 0):.1f}{cap}"
            )
        if r.wall_throughput:
            report.append(
                f"  {r.scenario}: N / (production start -> last acceptance) = "
                f"{r.wall_throughput:,.0f}/s"
            )
        st = r.extra.get("statuses")
        if st is not None and st.get("SENT", 0) != r.extra.get("expected"):
            report.append(
                f"  {r.scenario}: WARNING outcomes {st} for {r.extra.get('expected')} "
                f"mails ({r.extra.get('error') or 'incomplete'})"
            )
    blast_row = by.get("ceiling-smtp")
    if blast_row is not None:
        render_ms = blast_row.extra["render_compose_ms"]
        report += [
            "",
            "CPU per mail by stage, in the blast worker (ratio to render+compose of this run):",
            f"  render+compose {render_ms:.2f} ms/msg (1.00x)",
            *(
                f"  DKIM signing, {label} {dkim_ms:.2f} ms/msg ({dkim_ms / render_ms:.2f}x)"
                for label, dkim_ms in _dkim_rows(blast_row)
            ),
        ]
    report += ["", "goals:", *goals(by, naive, ceiling)]
    text = "\n".join(report) + "\n"
    sys.stdout.write(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"results-{stamp}.txt").write_text(text)
    (args.out / f"results-{stamp}.json").write_text(
        json.dumps(
            {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "rows": [r.__dict__ for r in ctx.rows],
            },
            indent=1,
            default=str,
        )
    )
    log(f"results in {args.out}/results-{stamp}.txt and .json")
    return 0
