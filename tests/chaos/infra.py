"""What the scenarios stand on: topics and their configs, group offsets, a broker of one's own
to stop and start, and a Redis server for instances that share an idempotency store."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import KafkaError, TopicPartition
from confluent_kafka.admin import (  # type: ignore[attr-defined]  # imported there, not re-exported
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from service.testing import free_port
from tests.conftest import ROOT

BROKER = ROOT / "deploy" / "kafka" / "broker.sh"
KAFKA_LOG = logging.getLogger("tests.chaos.librdkafka")
"""The test's own Kafka clients log here, not to stderr: a broker stopped on purpose would
otherwise fill the output with connection errors (pytest shows them when a test fails)."""


def client(bootstrap: str, **conf: Any) -> dict[str, Any]:
    """Configuration of one of the test's own Kafka clients."""
    return {"bootstrap.servers": bootstrap, "logger": KAFKA_LOG, **conf}


def create_topics(
    bootstrap: str,
    topics: dict[str, int],
    configs: dict[str, dict[str, str]] | None = None,
    replicas: dict[str, list[list[int]]] | None = None,
) -> None:
    """Create each topic with its partition count (and configs, and for some the broker ids
    of each partition's replicas); all must be new."""
    admin = AdminClient(client(bootstrap))
    configs = configs or {}
    replicas = replicas or {}
    futures = admin.create_topics(
        [
            NewTopic(t, n, replica_assignment=replicas[t], config=configs.get(t, {}))
            if t in replicas
            else NewTopic(t, num_partitions=n, replication_factor=-1, config=configs.get(t, {}))
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


PROBE_HEADER = "chaos.probe"
"""Marks a record the harness wrote itself; the watcher leaves it out."""


def wait_until_refused(bootstrap: str, topic: str, timeout_s: float = 60) -> int:
    """Produce probes (acks=all) to partition 0 of `topic` until its leader refuses them for
    want of in-sync replicas; returns that time (ms). A config change reaches the partition
    leaders asynchronously, in a second or in ten on a loaded machine."""
    producer = confluent_kafka.Producer(
        client(bootstrap, **{"acks": "all", "message.timeout.ms": 1500, "linger.ms": 0})
    )
    refused = {KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND}
    refused.add(KafkaError._MSG_TIMED_OUT)
    deadline = time.monotonic() + timeout_s
    outcome: list[Any] = []
    while True:
        outcome.clear()
        producer.produce(
            topic,
            b"probe",
            partition=0,
            headers=[(PROBE_HEADER, b"1")],
            on_delivery=lambda err, _msg: outcome.append(err),
        )
        producer.flush(10)
        if outcome and outcome[0] is not None and outcome[0].code() in refused:
            return int(time.time() * 1000)
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} still takes writes {timeout_s} s after the change")
        time.sleep(0.2)


def positions(bootstrap: str, group: str, topics: dict[str, int]) -> dict[tuple[str, int], int]:
    """The group's committed position per partition (-1001 when nothing was committed).

    Pending transactional offsets are not included. read_committed, librdkafka's default,
    would ask for stable offsets only (KIP-447), and the broker answers UNSTABLE_OFFSET_COMMIT
    for as long as a transaction holding offsets for the group is open: the call would block
    while a transaction waits on the results topic.
    """
    c = confluent_kafka.Consumer(
        client(bootstrap, **{"group.id": group, "isolation.level": "read_uncommitted"})
    )
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        return {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=15)}
    finally:
        c.close()


def topics_with_prefix(bootstrap: str, prefix: str) -> dict[str, int]:
    """Topics whose name starts with `prefix`, with their partition counts."""
    admin = AdminClient(client(bootstrap))
    meta = admin.list_topics(timeout=15)
    return {name: len(t.partitions) for name, t in meta.topics.items() if name.startswith(prefix)}


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
        self.data_dir = data_dir
        self.log = data_dir / "broker.log"

    def _cmd(self, action: str, timeout_s: float) -> None:
        subprocess.run(
            [str(BROKER), action], env=self._env, check=True, timeout=timeout_s, capture_output=True
        )

    def start(self) -> None:
        self._cmd("start", 300)

    def stop(self) -> None:
        self._cmd("stop", 120)

    def register_stopped_broker(self, node_id: int = 2) -> int:
        """Have a second, broker-only node join this cluster once, then stop it.

        The controller keeps a stopped broker registered (fenced), so replicas can still be
        assigned to it: a partition on [1, node_id] then has an in-sync replica set of one
        for good. Kafka 4.1 caps a partition's effective `min.insync.replicas` at its
        replication factor (`Partition.effectiveMinIsr`), so on a single node this is how a
        topic gets below its minimum ISR. New partitions are never placed on a fenced broker.
        """
        node = self.data_dir / f"node-{node_id}"
        (node / "logs").mkdir(parents=True, exist_ok=True)
        meta = (self.data_dir / "logs" / "meta.properties").read_text()
        cluster_id = next(
            line.split("=", 1)[1] for line in meta.splitlines() if line.startswith("cluster.id=")
        )
        port = free_port()
        props = node / "server.properties"
        props.write_text(
            f"""process.roles=broker
node.id={node_id}
controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}
listeners=PLAINTEXT://127.0.0.1:{port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={node / "logs"}
"""
        )
        libdir = subprocess.run(
            [str(BROKER), "libdir"], env=self._env, check=True, capture_output=True, text=True
        ).stdout.strip()
        java_home = os.environ.get("JAVA_HOME")
        java = [
            str(Path(java_home) / "bin" / "java") if java_home else "java",
            "-Xms64m",
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={BROKER.parent / 'log4j2.properties'}",
            "-cp",
            f"{libdir}/*",
        ]
        subprocess.run(
            [*java, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        log_path = node / "broker.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*java, "kafka.Kafka", str(props)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 120
            while b"Kafka Server started" not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"broker {node_id} did not start; see {log_path}")
                time.sleep(0.2)
        finally:
            proc.terminate()  # controlled shutdown: fenced, still registered
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return node_id


@contextlib.contextmanager
def dedicated_broker(data_dir: Path, needs: str) -> Iterator[DedicatedBroker]:
    """A broker of the test's own for the block; the test is skipped, saying what it `needs`
    the broker for, when KAFKA_BOOTSTRAP_SERVERS points at an existing cluster."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip(f"KAFKA_BOOTSTRAP_SERVERS points at an existing cluster; {needs}")
    broker = DedicatedBroker(data_dir)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
