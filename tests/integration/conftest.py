"""A real Kafka broker for the integration tests, found or started in this order:

1. `KAFKA_BOOTSTRAP_SERVERS` when set: an existing cluster;
2. testcontainers' Kafka (KRaft) when a Docker engine answers;
3. else the project's own single-node KRaft broker (`deploy/kafka/broker.sh`), started on free
   loopback ports with a throw-away data directory, and stopped after the session. It also has
   a SASL_SSL listener (SCRAM-SHA-512) for `kafka_sasl_ssl`; with 1. or 2., that fixture starts
   a broker of its own.

And a real Schema Registry, for the tests that ask for one: `SCHEMA_REGISTRY_URL` when set,
else the project's Apicurio Registry (`deploy/registry/registry.sh`) on free loopback ports.

Herald logs as `herald run` makes it (JSON, at DEBUG) throughout, and a test whose logs hold an
email address in clear fails (`tests/addresses.py` finds them).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest

from service.app import Herald
from service.kafka.admin import ensure_topics
from service.metrics import Metrics
from service.settings import Settings
from service.testing import SmtpServer, free_port
from tests.addresses import LogTap, clear_addresses, herald_logs
from tests.conftest import ROOT, project_settings

BROKER = ROOT / "deploy" / "kafka" / "broker.sh"
REGISTRY = ROOT / "deploy" / "registry" / "registry.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="package", autouse=True)
def herald_log_output() -> Iterator[LogTap]:
    """Herald's logging as `herald run` sets it up, at DEBUG, for the whole suite: structlog
    lines and, through the stdlib bridge, librdkafka's and the test SMTP server's."""
    with herald_logs("DEBUG", "json") as tap:
        yield tap
        _fail_on_clear_addresses(tap.take(), "after the last test")


@pytest.fixture(autouse=True)
def no_clear_address_logged(
    herald_log_output: LogTap, request: pytest.FixtureRequest
) -> Iterator[None]:
    """Fails a test whose logs hold an email address in clear: what Herald wrote since the
    previous test (module fixtures' lines included) and, for a test that captures structlog
    entries instead, those entries as logged, before any redaction."""
    entries: list[Any] = (
        request.getfixturevalue("log_entries") if "log_entries" in request.fixturenames else []
    )
    yield
    logged = "\n".join([herald_log_output.take(), *(str(e) for e in entries)])
    _fail_on_clear_addresses(logged, "in this test's logs")


def _fail_on_clear_addresses(text: str, where: str) -> None:
    if leaked := clear_addresses(text):
        pytest.fail(f"email addresses in clear {where}: {sorted(set(leaked))}", pytrace=False)


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            0
            == subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
        )
    except subprocess.TimeoutExpired:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslSsl:
    """A broker's SASL_SSL listener (SCRAM-SHA-512 over TLS) and the credential it accepts."""

    bootstrap: str
    plaintext: str
    """The same broker's plain listener, for the test's own producers and readers."""
    username: str
    password: str
    ca_file: Path
    """The throw-away CA that signed the broker's certificate."""

    def config(self) -> dict[str, str]:
        """librdkafka properties for this listener, all but the password."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": self.username,
            "ssl.ca.location": str(self.ca_file),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Broker:
    bootstrap: str
    sasl_ssl: SaslSsl | None
    """Present when the session started the project's broker."""


@contextmanager
def _project_broker(data_dir: Path) -> Iterator[Broker]:
    """deploy/kafka/broker.sh on free loopback ports, with its SASL_SSL listener."""
    port, sasl_port = free_port(), free_port()
    password = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "KAFKA_DATA_DIR": str(data_dir),
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_SASL_SSL_PORT": str(sasl_port),
        "KAFKA_SASL_USER": "herald",
        "KAFKA_SASL_PASSWORD": password,
        "KAFKA_NUM_PARTITIONS": "3",
    }
    subprocess.run([str(BROKER), "start"], env=env, check=True, timeout=300)
    try:
        yield Broker(
            bootstrap=f"127.0.0.1:{port}",
            sasl_ssl=SaslSsl(
                bootstrap=f"127.0.0.1:{sasl_port}",
                plaintext=f"127.0.0.1:{port}",
                username="herald",
                password=password,
                ca_file=data_dir / "tls" / "ca.pem",
            ),
        )
    finally:
        subprocess.run([str(BROKER), "stop"], env=env, check=False, timeout=120)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    existing = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if existing:
        yield Broker(bootstrap=existing, sasl_ssl=None)
        return
    if _docker_answers():
        try:
            from testcontainers.community.kafka import KafkaContainer
        except ImportError:  # testcontainers before 4.15
            from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield Broker(bootstrap=kafka.get_bootstrap_server(), sasl_ssl=None)
        return
    with _project_broker(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_broker: Broker) -> str:
    return kafka_broker.bootstrap


@pytest.fixture(scope="session")
def kafka_sasl_ssl(
    kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SaslSsl]:
    """The session broker's SASL_SSL listener, or a project broker of its own if it has none."""
    if kafka_broker.sasl_ssl is not None:
        yield kafka_broker.sasl_ssl
        return
    with _project_broker(tmp_path_factory.mktemp("kafka-sasl")) as broker:
        assert broker.sasl_ssl is not None
        yield broker.sasl_ssl


@pytest.fixture(scope="session")
def schema_registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Confluent-compatible registry's base URL; started only by the tests that need one."""
    existing = os.environ.get("SCHEMA_REGISTRY_URL")
    if existing:
        yield existing
        return
    port = free_port()
    env = {
        **os.environ,
        "REGISTRY_DATA_DIR": str(tmp_path_factory.mktemp("registry")),
        "REGISTRY_PORT": str(port),
        "REGISTRY_MANAGEMENT_PORT": str(free_port()),
    }
    subprocess.run([str(REGISTRY), "start"], env=env, check=True, timeout=300)
    try:
        yield f"http://127.0.0.1:{port}/apis/ccompat/v7"
    finally:
        subprocess.run([str(REGISTRY), "stop"], env=env, check=False, timeout=60)


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def integration_settings(
    prefix: str, kafka_bootstrap: str, smtp_port: int, state_dir: Path, **overrides: Any
) -> Settings:
    """Settings for a Herald under test: topics and consumer group named by `prefix`, a
    transactional id of its own, the test SMTP server, its store under `state_dir`."""
    groups: dict[str, dict[str, Any]] = {
        "kafka": {
            "bootstrap_servers": kafka_bootstrap,
            "group_id": f"{prefix}herald",
            "topic_prefix": prefix,
            "transactional_id": f"{prefix}herald-{uuid.uuid4().hex[:6]}",
            "statistics_interval_ms": 500,
        },
        "smtp": {
            "host": "127.0.0.1",
            "port": smtp_port,
            "tls": "none",
            "timeout_s": 10,
            "retry_backoff_ms": 10,
        },
        "http": {"host": "127.0.0.1", "port": 0},
        "public": {"host": "127.0.0.1", "port": 0},
        "processing": {"commit_interval_ms": 100, "shutdown_timeout_s": 10},
        "idempotency": {"path": state_dir / "idempotency.sqlite3"},
        "retry": {"delays_s": [1, 2]},
        "policy": {"state_path": state_dir / f"policy-{uuid.uuid4().hex[:6]}.sqlite3"},
    }
    for name, values in groups.items():
        values.update(overrides.pop(name, {}))
    return project_settings(**groups, **overrides)


@pytest.fixture
def make_settings(kafka_bootstrap: str, smtp: SmtpServer, tmp_path: Path) -> Any:
    """Settings for one test: its own topics (by prefix) and consumer group, the test SMTP."""
    prefix = f"it-{uuid.uuid4().hex[:8]}."

    def build(**overrides: Any) -> Settings:
        return integration_settings(prefix, kafka_bootstrap, smtp.port, tmp_path, **overrides)

    return build


def create_topics(settings: Settings) -> None:
    k = settings.kafka
    from service.app import load

    topics = [
        *load(settings).bindings,
        k.topic_prefix + k.results_topic,
        k.topic_prefix + k.dead_letter_topic,
    ]
    ensure_topics(k.librdkafka(), topics, partitions=3)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[Herald]:
    """Herald in this process, consuming until the block ends; then a graceful stop."""
    herald = Herald(settings, metrics=Metrics(), **kwargs)
    stop = asyncio.Event()
    task = asyncio.create_task(herald.run(stop))
    deadline = time.monotonic() + 60
    while not herald.ready:
        if task.done():
            task.result()
        assert time.monotonic() < deadline, "Herald did not join the group within 60 s"
        await asyncio.sleep(0.05)
    try:
        yield herald
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


def produce(
    settings: Settings,
    records: Sequence[tuple[str, bytes | None, bytes | None]],
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    """Produce (topic suffix, key, value) records and wait for the broker's acknowledgement."""
    p = confluent_kafka.Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for topic, key, value in records:
        p.produce(settings.kafka.topic_prefix + topic, value, key, headers=headers)
    assert 0 == p.flush(30)


async def read_topic(
    settings: Settings, topic: str, count: int, timeout_s: float = 60
) -> list[Any]:
    """Read `count` committed records of a topic from the beginning (fails if fewer arrive)."""
    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"reader-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    c.subscribe([settings.kafka.topic_prefix + topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            m = await asyncio.to_thread(c.poll, 0.2)
            if m is not None and m.error() is None:
                out.append(m)
        # A little longer, to catch records that should not be there.
        extra_deadline = time.monotonic() + 1.0
        while time.monotonic() < extra_deadline:
            m = await asyncio.to_thread(c.poll, 0.2)
            if m is not None and m.error() is None:
                out.append(m)
    finally:
        c.close()
    assert count == len(out), f"{topic}: expected {count} records, got {len(out)}"
    return out


async def wait_for(predicate: Any, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def committed(settings: Settings, topic: str, partitions: int = 3) -> dict[int, int]:
    """The consumer group's committed positions on a topic."""
    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": settings.kafka.group_id,
        }
    )
    try:
        tps = [
            confluent_kafka.TopicPartition(settings.kafka.topic_prefix + topic, p)
            for p in range(partitions)
        ]
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def end_offsets(settings: Settings, topic: str, partitions: int = 3) -> dict[int, int]:
    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": "offsets-probe",
        }
    )
    try:
        return {
            p: c.get_watermark_offsets(
                confluent_kafka.TopicPartition(settings.kafka.topic_prefix + topic, p), timeout=10
            )[1]
            for p in range(partitions)
        }
    finally:
        c.close()


__all__ = [
    "Path",
    "committed",
    "create_topics",
    "end_offsets",
    "integration_settings",
    "produce",
    "read_topic",
    "running",
    "wait_for",
]
