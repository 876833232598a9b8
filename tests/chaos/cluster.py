"""A three-node Kafka cluster for the cluster scenarios (deploy/kafka/cluster.sh), and the links
between its nodes, which a scenario can cut.

Each node's replication listener (inter-broker: follower fetches, transaction markers) is
advertised at a port of `ReplicationLinks`, a TCP forwarder in the test process. Cutting it
leaves clients and the controller quorum alone: followers stop fetching, fall out of the ISR
after `replica.lag.time.max.ms`, and every partition is left below `min.insync.replicas`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from service.testing import free_port
from tests.chaos.infra import client
from tests.conftest import ROOT

CLUSTER = ROOT / "deploy" / "kafka" / "cluster.sh"
NODES = (1, 2, 3)
TXN_STATE = "__transaction_state"
OFFSETS = "__consumer_offsets"


class ReplicationLinks:
    """TCP forwarders, listen port → target port on 127.0.0.1, on a thread and loop of their own.

    `cut()` stops listening and closes every forwarded connection (the nodes get connection
    refused); `mend()` listens again on the same ports.
    """

    def __init__(self, routes: dict[int, int]) -> None:
        self._routes = routes
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0
        """Connections forwarded so far."""
        self.is_cut = True
        self._thread = threading.Thread(target=self._loop.run_forever, name="chaos-links")
        self._thread.daemon = True
        self._thread.start()
        self.mend()

    def _call(self, fn: Callable[[], object]) -> None:
        async def run() -> None:
            result = fn()
            if asyncio.iscoroutine(result):
                await result

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def mend(self) -> None:
        if self.is_cut:
            self._call(self._listen)
            self.is_cut = False

    def cut(self) -> None:
        if not self.is_cut:
            self._call(self._close)
            self.is_cut = True

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()

    async def _listen(self) -> None:
        for listen, target in self._routes.items():
            forward = functools.partial(self._forward, target=target)
            self._servers.append(
                await asyncio.start_server(forward, "127.0.0.1", listen, reuse_address=True)
            )

    async def _close(self) -> None:
        for server in self._servers:
            server.close()
        for writer in list(self._writers):
            writer.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)

    async def _forward(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: int
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
            except OSError:
                return  # the node is down: the caller sees its connection closed
            self.connections += 1
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
                with contextlib.suppress(OSError):
                    await up_writer.wait_closed()
        finally:
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._tasks.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side closes; then close the other way too."""
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@dataclass(frozen=True, slots=True)
class Partition:
    leader: int
    """-1 when the partition has no leader."""
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def _java_hash(text: str) -> int:
    """Java's `String.hashCode` (UTF-16 code units, 32-bit overflow)."""
    h = 0
    data = text.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i : i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def txn_partition(transactional_id: str, partitions: int) -> int:
    """The `__transaction_state` partition whose leader coordinates this transactional id, or
    the `__consumer_offsets` partition of this group id (Kafka's
    `Utils.abs(id.hashCode) % partitions`)."""
    h = _java_hash(transactional_id)
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def _one_per_partition(prefix: str, partitions: int) -> list[str]:
    """Ids that hash to each partition of an internal topic, one apiece."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        found.setdefault(txn_partition(f"{prefix}{i}", partitions), f"{prefix}{i}")
        i += 1
    return [found[p] for p in range(partitions)]


def _init_transactions(bootstrap: str, transactional_id: str) -> None:
    producer = confluent_kafka.Producer(client(bootstrap, **{"transactional.id": transactional_id}))
    with contextlib.suppress(KafkaException):  # refused or timed out: the write is what counts
        producer.init_transactions(5)


def _commit_offset(bootstrap: str, group: str, topic: str) -> None:
    # A consumer's commit, not the AdminClient's alter_consumer_group_offsets: that one got no
    # answer from this cluster within 30 s, even with every node up (librdkafka 2.16).
    consumer = confluent_kafka.Consumer(client(bootstrap, **{"group.id": group}))
    try:
        with contextlib.suppress(KafkaException):  # refused or timed out: the write counts
            consumer.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        consumer.close()


class KafkaCluster:
    """Three KRaft nodes (broker and controller each) on free loopback ports, replication
    through `links`; killed and restarted node by node, stopped as a whole at the end."""

    def __init__(self, data_dir: Path) -> None:
        ports = {n: free_port() for n in NODES}
        replication = {n: free_port() for n in NODES}
        advertised = {n: free_port() for n in NODES}
        self.links = ReplicationLinks({advertised[n]: replication[n] for n in NODES})
        self.data_dir = data_dir
        self.bootstrap = ",".join(f"127.0.0.1:{ports[n]}" for n in NODES)
        self._env = {
            **os.environ,
            "KAFKA_CLUSTER_DIR": str(data_dir),
            "KAFKA_CLUSTER_PORTS": ",".join(str(ports[n]) for n in NODES),
            "KAFKA_CLUSTER_CONTROLLER_PORTS": ",".join(str(free_port()) for _ in NODES),
            "KAFKA_CLUSTER_REPLICATION_PORTS": ",".join(str(replication[n]) for n in NODES),
            "KAFKA_CLUSTER_REPLICATION_ADVERTISED_PORTS": ",".join(
                str(advertised[n]) for n in NODES
            ),
            "KAFKA_NUM_PARTITIONS": "3",
        }
        self.down: set[int] = set()
        self._writes: list[threading.Thread] = []

    def _cmd(self, *args: str, timeout_s: float = 180) -> str:
        done = subprocess.run(
            [str(CLUSTER), *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"cluster.sh {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return done.stdout

    # -- nodes ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._cmd("start")
        self.down.clear()

    def stop(self) -> None:
        self.links.mend()  # the writes left waiting get their answers
        self._join_writes()
        try:
            self._cmd("stop", timeout_s=120)
        finally:
            self.links.close()

    def kill(self, node: int) -> None:
        """SIGKILL: no controlled shutdown, no flush; the node's leaders move only once the
        controller fences it (`broker.session.timeout.ms`) or it registers again."""
        self._cmd("kill", str(node))
        self.down.add(node)

    def start_node(self, node: int) -> None:
        self._cmd("start-node", str(node))
        self.down.discard(node)

    # -- metadata -------------------------------------------------------------------------------

    def _admin(self) -> AdminClient:
        return AdminClient(client(self.bootstrap))

    def partitions(self, topics: Iterable[str] | None = None) -> dict[tuple[str, int], Partition]:
        """Leader, replicas and ISR of every partition of `topics` (default: every topic)."""
        meta = self._admin().list_topics(timeout=15).topics
        names = list(meta) if topics is None else list(topics)
        return {
            (t, p): Partition(pm.leader, tuple(pm.replicas), tuple(pm.isrs))
            for t in names
            for p, pm in meta[t].partitions.items()
        }

    def coordinator(self, transactional_id: str) -> int:
        """The node leading the `__transaction_state` partition of this transactional id."""
        state = self.partitions([TXN_STATE])
        p = txn_partition(transactional_id, len(state))
        return state[(TXN_STATE, p)].leader

    def wait_until(
        self,
        ok: Callable[[dict[tuple[str, int], Partition]], bool],
        what: str,
        topics: Iterable[str] | None = None,
        timeout_s: float = 120,
    ) -> dict[tuple[str, int], Partition]:
        """Until the partitions of `topics` satisfy `ok`; raises naming `what` past the
        deadline."""
        topics = None if topics is None else list(topics)
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):  # a node going away fails one look, not all
                parts = self.partitions(topics)
                if ok(parts):
                    return parts
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} after {timeout_s:.0f} s: {self._describe()}")
            time.sleep(0.25)

    def _describe(self) -> str:
        try:
            parts = self.partitions()
        except Exception as exc:
            return f"metadata unavailable ({exc})"
        return "; ".join(
            f"{t}[{p}] leader {v.leader} isr {list(v.isr)}"
            for (t, p), v in sorted(parts.items())
            if set(v.isr) != set(v.replicas) or v.leader < 0
        )

    def wait_in_sync(self, timeout_s: float = 180) -> None:
        """Until every partition of every topic has a leader and all its replicas in sync."""
        self.wait_until(
            lambda parts: all(
                v.leader >= 0 and set(v.isr) == set(v.replicas) for v in parts.values()
            ),
            "every partition in sync",
            timeout_s=timeout_s,
        )

    def move_leaders(self, topics: Iterable[str]) -> list[str]:
        """Every partition of `topics` to another in-sync replica (`cluster.sh move-leaders`);
        returns the moves, as `topic-partition: from -> to`."""
        out = self._cmd("move-leaders", *topics, timeout_s=120)
        lines = out.strip().splitlines()
        if not lines or not re.match(r"moved \d+ of \d+ partitions", lines[-1]):
            raise RuntimeError(f"unexpected move-leaders output: {out!r}")
        return lines[:-1]

    def write_internal(self, offsets_topic: str) -> None:
        """One write into every partition of the transaction-state and offsets topics, which
        clients cannot produce to: an `InitProducerId` for a transactional id and an offset
        commit (for `offsets_topic`) of a group id that hash to each. The writes wait for
        the followers, or fail, on threads of their own, joined by `healthy` and `stop`."""
        parts = self.partitions([TXN_STATE, OFFSETS])
        sizes = Counter(t for t, _p in parts)
        threads = [
            threading.Thread(target=_init_transactions, args=(self.bootstrap, tid), daemon=True)
            for tid in _one_per_partition("chaos-write-txn-", sizes[TXN_STATE])
        ] + [
            threading.Thread(
                target=_commit_offset, args=(self.bootstrap, group, offsets_topic), daemon=True
            )
            for group in _one_per_partition("chaos-write-group-", sizes[OFFSETS])
        ]
        for thread in threads:
            thread.start()
        self._writes += threads

    def _join_writes(self) -> None:
        for thread in self._writes:
            thread.join(60)
        self._writes.clear()

    def healthy(self) -> None:
        """Every node up, the links whole and every partition in sync: where a scenario
        starts from, whatever the one before did."""
        self.links.mend()
        self._join_writes()
        for node in sorted(self.down):
            self.start_node(node)
        self.wait_in_sync()


@contextlib.contextmanager
def kafka_cluster(data_dir: Path) -> Iterator[KafkaCluster]:
    """A cluster of the test's own for the block; skipped when KAFKA_BOOTSTRAP_SERVERS points at
    an existing cluster (the scenarios kill its nodes and cut its links)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        pytest.skip(
            "KAFKA_BOOTSTRAP_SERVERS points at an existing cluster; the cluster scenarios need "
            "a three-node cluster of their own (deploy/kafka/cluster.sh) to kill nodes of"
        )
    cluster = KafkaCluster(data_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
