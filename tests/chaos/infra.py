"""What the scenarios stand on: topics and their configs, group offsets, a broker of one's own
to stop and start, and a Redis server for instances that share an idempotency store."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import confluent_kafka
from confluent_kafka import TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from tests.conftest import ROOT
from tests.smtp_server import free_port

BROKER = ROOT / "deploy" / "kafka" / "broker.sh"
KAFKA_LOG = logging.getLogger("tests.chaos.librdkafka")
"""The test's own Kafka clients log here, not to stderr: a broker stopped on purpose would
otherwise fill the output with connection errors (pytest shows them when a test fails)."""


def client(bootstrap: str, **conf: Any) -> dict[str, Any]:
    """Configuration of one of the test's own Kafka clients."""
    return {"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, **conf}


def create_topics(
    bootstrap: str, topics: dict[str, int], configs: dict[str, dict[str, str]] | None = None
) -> None:
    """Create each topic with its partition count (and configs); all must be new."""
    admin = AdminClient(client(bootstrap))
    configs = configs or {}
    futures = admin.create_topics(
        [
            NewTopic(t, num_partitions=n, replication_factor=-1, config=configs.get(t, {}))
            for t, n in topics.items()
        ],
        operation_timeout=30,
    )
    for fut in futures.values():
        fut.result()
    # Metadata reaches every client a moment later; wait until a fresh client sees them all.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = admin.list_topics(timeout=10).topics
        if all(t in listed and len(listed[t].partitions) == n for t, n in topics.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"topics {sorted(topics)} not visible after 30 s")


def set_topic_config(bootstrap: str, topic: str, name: str, value: str | None) -> None:
    """Set one topic-level config, or restore the broker default with value None."""
    admin = AdminClient(client(bootstrap))
    op = AlterConfigOpType.SET if value is not None else AlterConfigOpType.DELETE
    entry = ConfigEntry(name, value or "", incremental_operation=op)
    resource = ConfigResource("TOPIC", topic, incremental_configs=[entry])
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(timeout=30)


def positions(bootstrap: str, group: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    """The group's committed position per partition (-1001 when nothing was committed)."""
    c = confluent_kafka.Consumer(client(bootstrap, **{"group.id": group}))
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=15)}
    finally:
        c.close()


def end_offsets(bootstrap: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    c = confluent_kafka.Consumer(client(bootstrap, **{"group.id": "chaos-probe"}))
    try:
        return {
            (t, p): c.get_watermark_offsets(TopicPartition(t, p), timeout=15)[1]
            for t, n in topics.items()
            for p in range(n)
        }
    finally:
        c.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class DedicatedBroker:
    """A single-node KRaft broker (deploy/kafka/broker.sh) for one scenario, stopped at the end.

    Its own data directory and ports; `stop()` and `start()` keep both, so a restart is the same
    broker with the same data.
    """

    def __init__(self, data_dir: Path) -> None:
        self.port, self.controller_port = free_port(), free_port()
        self._env = {
            **os.environ,
            "KAFKA_DATA_DIR": str(data_dir),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_NUM_PARTITIONS": "3",
        }
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log = data_dir / "broker.log"

    def _cmd(self, action: str, timeout_s: float) -> None:
        subprocess.run(
            [str(BROKER), action], env=self._env, check=True, timeout=timeout_s, capture_output=True
        )

    def start(self) -> None:
        self._cmd("start", 300)

    def stop(self) -> None:
        self._cmd("stop", 120)


class RedisServer:
    """`redis-server` on a free loopback port, in memory only."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = (workdir / "redis.log").open("wb")
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not _port_open(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.05)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._log.close()
