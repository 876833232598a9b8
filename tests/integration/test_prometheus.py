"""A real Prometheus (Debian's package) scraping a running Herald on the real broker, with
deploy/prometheus/herald-rules.yaml loaded: Herald's counters, a recording rule, an alert and
the rules' health as Prometheus's HTTP API gives them; the Grafana dashboard's metrics and
queries against that Herald and that Prometheus; the snapshot drawn from it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from PIL import Image

from service.settings import Settings
from service.testing import SmtpServer, free_port
from tests.addresses import clear_addresses
from tests.conftest import EXAMPLES, ROOT
from tests.integration.conftest import create_topics, integration_settings, produce, running
from tests.ops.promql import (
    DASHBOARD,
    RULES,
    alerting_rules,
    dashboard_queries,
    recording_rules,
    unknown_metrics,
)

T = TypeVar("T")

SNAPSHOT = ROOT / "deploy" / "grafana" / "snapshot.py"
SCRAPE_S = 1
"""Scrape and rule evaluation interval: short, so the test waits seconds, not minutes."""

FIRST = ["order.confirmed", "user.signed_up"]
FEEDBACK_SAMPLE = ROOT / "tests" / "data" / "feedback" / "dsn-hard-5.1.1.eml"
"""A hard bounce of a mail Herald did not send: processed, uncorrelated, and a suppression."""
FEEDBACK_MESSAGE_ID = "a1b2c3d4e5f60718293a4b5c6d7e8f90@mail.example.net"
SECOND = ["order.confirmed", "user.signed_up", "login.suspicious"]
EXPECTED = {  # herald_notifications_total after both batches, by (notification, status)
    ("order.receipt", "sent"): 2.0,
    ("account.activation", "sent"): 2.0,
    ("security.suspicious_login", "sent"): 1.0,
    ("none", "dead_lettered"): 1.0,  # the garbage record of the first batch
}


class HeraldThread:
    """Herald on an event loop of its own thread, so the tests of this module share one
    instance that Prometheus keeps scraping between them."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="herald", daemon=True)
        self.port = 0
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test thread, which raises it
            self.error = exc
        finally:
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running(self._settings) as herald:
            self.port = herald.http_port or 0
            self._started.set()
            await self._stop.wait()

    def __enter__(self) -> HeraldThread:
        self._thread.start()
        self._started.wait(90)
        if self.error is not None or not self.port:
            raise AssertionError("Herald did not start") from self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(90)
        assert not self._thread.is_alive(), "Herald did not stop within 90 s"
        if self.error is not None:
            raise self.error


class Prometheus:
    """Debian's prometheus binary on a free loopback port, scraping one Herald every
    SCRAPE_S with the project's rule file, its data in a throw-away directory."""

    def __init__(self, herald_port: int, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._workdir = workdir
        self._log = workdir / "prometheus.log"
        config = {
            "global": {
                "scrape_interval": f"{SCRAPE_S}s",
                "scrape_timeout": f"{SCRAPE_S}s",
                "evaluation_interval": f"{SCRAPE_S}s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "herald",
                    "static_configs": [{"targets": [f"127.0.0.1:{herald_port}"]}],
                }
            ],
        }
        self._config = workdir / "prometheus.yml"
        self._config.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not Path(binary).is_file():
            pytest.fail("prometheus is not installed: run `make system-deps`")
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self._config}",
                    f"--storage.tsdb.path={self._workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            until(lambda: self.ready() or None, "Prometheus ready", self)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=15)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as resp:
                return bool(200 == resp.status)
        except OSError:  # not listening yet, or 503 while it loads
            return False

    def log_tail(self) -> str:
        return self._log.read_text(encoding="utf-8", errors="replace")[-3000:]

    def alive(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        assert code is None, f"prometheus exited with {code}:\n{self.log_tail()}"

    def get(self, path: str, **params: str) -> Any:
        """The decoded JSON answer of a GET to the HTTP API; an error answer raises."""
        query = "?" + urllib.parse.urlencode(params) if params else ""
        try:
            with urllib.request.urlopen(self.url + path + query, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"GET {path} {params}: {exc.code} {exc.read()!r}") from exc

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector."""
        answer = self.get("/api/v1/query", query=promql)
        assert "success" == answer["status"], answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result


def until(
    probe: Callable[[], T | None],
    what: str,
    prometheus: Prometheus | None = None,
    herald: HeraldThread | None = None,
    timeout_s: float = 60,
) -> T:
    """Poll `probe` until it returns something other than None; fail after `timeout_s`, or at
    once when Herald or Prometheus has died."""
    deadline = time.monotonic() + timeout_s
    while True:
        if herald is not None and herald.error is not None:
            raise AssertionError(f"Herald stopped while waiting for {what}") from herald.error
        if prometheus is not None:
            prometheus.alive()
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            tail = prometheus.log_tail() if prometheus is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}\n{tail}")
        time.sleep(0.1)


def by_labels(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(r["metric"].get(n, "") for n in labels): float(r["value"][1]) for r in result}


def herald_command(settings: Settings, *args: str) -> str:
    """Run `herald <args>` against this test's broker and topics; what it printed, checked to
    have succeeded."""
    env = {
        **os.environ,
        "HERALD_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "HERALD_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
    }
    done = subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    return done.stdout + done.stderr


def publish_examples(settings: Settings, event_types: list[str], workdir: Path) -> None:
    """Publish the project's example events with fresh event ids through `herald demo`."""
    examples = workdir / f"examples-{uuid.uuid4().hex[:6]}"
    examples.mkdir()
    for event_type in event_types:
        shutil.copy(EXAMPLES / f"{event_type}.json", examples)
    said = herald_command(settings, "demo", "--examples", str(examples), "--wait-s", "0")
    assert [] == clear_addresses(said)


def publish_feedback(settings: Settings, report: Path) -> None:
    """Publish a bounce report through `herald feedback`, as an operator would."""
    said = herald_command(settings, "feedback", str(report))
    # The command prints the report's Message-ID, which names a mail, not a person.
    assert [] == clear_addresses(said.replace(FEEDBACK_MESSAGE_ID, "<message id>"))


@dataclass(frozen=True)
class Observed:
    """A Herald that has processed both batches, and the Prometheus scraping it."""

    herald: HeraldThread
    prometheus: Prometheus
    smtp: SmtpServer
    started_at: float
    """Unix time just before Herald and Prometheus started."""


@pytest.fixture(scope="module")
def observed(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Herald on the real broker and SMTP server, scraped by Prometheus before, between and
    after two batches of events (the first with a record that cannot be decoded), then a hard
    bounce read by `herald feedback`."""
    workdir = tmp_path_factory.mktemp("observed")
    with SmtpServer() as smtp:
        prefix = f"it-{uuid.uuid4().hex[:8]}."
        settings = integration_settings(prefix, kafka_bootstrap, smtp.port, workdir)
        create_topics(settings)
        started_at = time.time()
        with HeraldThread(settings) as herald, Prometheus(herald.port, workdir) as prometheus:
            until(
                lambda: prometheus.query('up{job="herald"} == 1') or None,
                "the first scrape",
                prometheus,
                herald,
            )
            produce(settings, [("user.signed_up", b"u1", b"not avro at all")])
            publish_examples(settings, FIRST, workdir)
            until(
                lambda: (
                    prometheus.query('sum(herald_notifications_total{job="herald"}) == 3') or None
                ),
                "the first batch in Prometheus",
                prometheus,
                herald,
            )
            publish_examples(settings, SECOND, workdir)
            until(lambda: len(smtp.received) >= 5 or None, "five mails", prometheus, herald)
            publish_feedback(settings, FEEDBACK_SAMPLE)
            until(
                # Scraped twice at least, so that rate() over it answers, as its panel asks.
                lambda: (
                    prometheus.query('sum(rate(herald_feedback_processed_total{job="herald"}[1m]))')
                    or None
                ),
                "the bounce processed, scraped twice",
                prometheus,
                herald,
            )
            yield Observed(herald=herald, prometheus=prometheus, smtp=smtp, started_at=started_at)


def test_prometheus_scrapes_herald_counters_as_sent(observed: Observed) -> None:
    """Prometheus holds herald_notifications_total per notification and status as many as the
    events sent, and Herald's lag per partition of the topics it read."""
    prometheus = observed.prometheus

    def counted() -> dict[tuple[str, ...], float] | None:
        found = by_labels(
            prometheus.query('herald_notifications_total{job="herald"}'), "notification", "status"
        )
        return found if found == EXPECTED else None

    until(counted, f"herald_notifications_total == {EXPECTED}", prometheus, observed.herald)
    assert 5 == len(observed.smtp.received)

    def worked_off() -> dict[tuple[str, ...], float] | None:
        lag = by_labels(prometheus.query('herald_consumer_lag{job="herald"}'), "topic", "partition")
        topics = {topic.split(".", 1)[1] for topic, _ in lag}
        return lag if set(SECOND) <= topics and {0.0} == set(lag.values()) else None

    until(worked_off, "lag of every topic read, at 0", prometheus, observed.herald)


def test_recording_rules_follow_the_counters(observed: Observed) -> None:
    """job_notification_status:herald_notifications:rate5m has one series per notification and
    status: above zero where the second batch added to a counter Prometheus had seen, zero
    where a series was born at its only count (why the rare-event alerts look for new series)."""
    prometheus = observed.prometheus
    rule = 'job_notification_status:herald_notifications:rate5m{job="herald"}'

    def rates() -> dict[tuple[str, ...], float] | None:
        found = by_labels(prometheus.query(rule), "notification", "status")
        rising = [
            found.get(("order.receipt", "sent"), 0),
            found.get(("account.activation", "sent"), 0),
        ]
        return found if set(found) == set(EXPECTED) and min(rising) > 0 else None

    found = until(rates, f"{rule} for every counter", prometheus, observed.herald)
    assert 0 == found[("none", "dead_lettered")]
    assert 0 == found[("security.suspicious_login", "sent")]


def test_the_dead_letter_alert_fires_and_every_rule_evaluates(observed: Observed) -> None:
    """The undecodable record fires HeraldDeadLetters (reason decode_error) though its counter
    was born at 1; no other alert fires; every rule of the file is loaded and evaluates without
    error against Herald's real series."""
    prometheus = observed.prometheus

    def firing() -> list[dict[str, Any]] | None:
        alerts = prometheus.get("/api/v1/alerts")["data"]["alerts"]
        names = [a for a in alerts if a["state"] == "firing"]
        return (
            names if any(a["labels"]["alertname"] == "HeraldDeadLetters" for a in names) else None
        )

    alerts = until(firing, "HeraldDeadLetters firing", prometheus, observed.herald)
    assert [("HeraldDeadLetters", "decode_error", "warning")] == [
        (a["labels"]["alertname"], a["labels"].get("reason"), a["labels"]["severity"])
        for a in alerts
    ]

    groups = prometheus.get("/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(recording_rules()) + len(alerting_rules()) == len(rules)
    assert [] == [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]


def _live_metrics(herald: HeraldThread) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{herald.port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return text


def test_every_dashboard_query_runs_on_live_metrics(observed: Observed) -> None:
    """Every metric the dashboard names is in the /metrics of this Herald, which has processed
    records; every panel's query, as Grafana sends it, evaluates in Prometheus and gives series."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    live = _live_metrics(observed.herald)
    assert "herald_notifications_total{" in live  # the records left their mark
    assert {} == unknown_metrics(dashboard, live)

    answered: dict[str, bool] = {}
    for title, expr in dashboard_queries(dashboard):
        if not title.startswith("variable "):
            grafana = expr.replace("$__rate_interval", "1m").replace("$instance", ".+")
            answered[title] = answered.get(title, False) or bool(observed.prometheus.query(grafana))
    assert 16 == len(answered)
    assert [] == [title for title, data in answered.items() if not data]


def test_the_snapshot_draws_every_panel_from_prometheus(observed: Observed, tmp_path: Path) -> None:
    """deploy/grafana/snapshot.py draws every panel of the dashboard with series from this
    Prometheus, into a PNG under 300 kB that is not blank."""
    out = tmp_path / "dashboard.png"
    done = subprocess.run(
        [
            sys.executable,
            str(SNAPSHOT),
            f"--prometheus={observed.prometheus.url}",
            f"--start={observed.started_at}",
            "--step=1",
            f"--out={out}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == done.returncode, done.stdout + done.stderr
    drawn = {
        m.group(2): int(m.group(1))
        for m in re.finditer(r"^\s*(\d+) series  (.+)$", done.stdout, flags=re.M)
    }
    assert 16 == len(drawn)
    assert [] == [title for title, count in drawn.items() if count == 0]
    assert 0 < out.stat().st_size < 300_000
    with Image.open(out) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is not None
    assert len(colours) > 8
