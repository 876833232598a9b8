"""Fixtures of the fault-injection suite, and how its size is chosen.

Every scenario runs at two scales: `quick` (a few hundred records, short faults: `make test` and
CI) and `full` (thousands of records, longer and more faults: `make chaos`). Only one of them is
selected per run:
- full when `CHAOS_FULL=1` (or `CHAOS_SCALE=full`) is set, or `-m` asks for `chaos_full`;
- quick otherwise.
Every chaos test is also marked `integration` (it needs the broker) and `chaos`.
`CHAOS_SEED=<n>` replays a run's random choices (each report prints its seed).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from service.app import Loaded
from tests.chaos.cluster import KafkaCluster, kafka_cluster
from tests.chaos.harness import FULL, QUICK, Run, Scale
from tests.chaos.infra import DedicatedBroker, RedisServer, dedicated_broker
from tests.chaos.workload import trapped_templates
from tests.integration.conftest import kafka_bootstrap, kafka_broker

__all__ = ["kafka_bootstrap", "kafka_broker"]

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos: fault-injection scenario (tests/chaos), quick scale")
    config.addinivalue_line(
        "markers", "chaos_full: the full-scale fault-injection scenarios (`make chaos`)"
    )


def _full_requested(config: pytest.Config) -> bool:
    if os.environ.get("CHAOS_FULL", "") not in ("", "0") or os.environ.get("CHAOS_SCALE") == "full":
        return True
    expr = str(config.getoption("markexpr") or "")
    return "chaos_full" in expr and "not chaos_full" not in expr


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    full = _full_requested(config)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            keep.append(item)
            continue
        item.add_marker(pytest.mark.integration)
        item.add_marker(pytest.mark.chaos)
        is_full = item.get_closest_marker("chaos_full") is not None
        (keep if is_full == full else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(
    params=[
        pytest.param(QUICK, id="quick", marks=pytest.mark.timeout(QUICK.timeout_s)),
        pytest.param(
            FULL, id="full", marks=[pytest.mark.chaos_full, pytest.mark.timeout(FULL.timeout_s)]
        ),
    ]
)
def scale(request: pytest.FixtureRequest) -> Scale:
    return cast(Scale, request.param)


@pytest.fixture
def seed() -> int:
    return int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trapped_templates(tmp_path_factory.mktemp("templates"))


@dataclass
class Chaos:
    scale: Scale
    seed: int
    loaded: Loaded
    bootstrap: str
    tmp_path: Path
    templates: Path
    runs: list[Run]

    def run(
        self,
        scenario: str,
        *,
        bootstrap: str | None = None,
        backend: str = "sqlite",
        redis_url: str | None = None,
        results_replicas: list[list[int]] | None = None,
        results_config: dict[str, str] | None = None,
    ) -> Run:
        run = Run(
            scenario=scenario,
            scale=self.scale,
            seed=self.seed,
            loaded=self.loaded,
            bootstrap=bootstrap or self.bootstrap,
            workdir=self.tmp_path,
            templates=self.templates,
            backend=backend,
            redis_url=redis_url,
            results_replicas=results_replicas,
            results_config=results_config,
        )
        self.runs.append(run)
        return run


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        for chaos in getattr(item, "funcargs", {}).values():
            if isinstance(chaos, Chaos):
                logs = "\n".join(run.logs() for run in chaos.runs)
                report.sections.append(("herald logs (tails)", logs))
    return report


@pytest.fixture
def chaos(
    kafka_bootstrap: str,
    loaded: Loaded,
    tmp_path: Path,
    templates: Path,
    scale: Scale,
    seed: int,
) -> Chaos:
    return Chaos(scale, seed, loaded, kafka_bootstrap, tmp_path, templates, [])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """Three KRaft nodes (deploy/kafka/cluster.sh) for the scenarios of one module, which may
    kill its nodes and cut the links between them."""
    with kafka_cluster(tmp_path_factory.mktemp("kafka-cluster")) as started:
        yield started


@pytest.fixture
def cluster_chaos(
    cluster: KafkaCluster,
    loaded: Loaded,
    tmp_path: Path,
    templates: Path,
    scale: Scale,
    seed: int,
) -> Chaos:
    """`chaos` on the three-node cluster, every node up and every partition in sync."""
    cluster.healthy()
    return Chaos(scale, seed, loaded, cluster.bootstrap, tmp_path, templates, [])


@pytest.fixture
def chaos_redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh in-memory Redis per scenario, for instances sharing the idempotency store."""
    try:
        server = RedisServer(tmp_path)
    except FileNotFoundError:
        pytest.skip(
            "redis-server is not installed: instances that share a group must share the "
            "idempotency store, which is Redis (apt-get install redis-server)"
        )
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[DedicatedBroker]:
    """A broker this scenario may stop and start, or add a stopped node to, without
    disturbing any other test."""
    needs = (
        "the broker-restart and results-topic scenarios need a broker of their own "
        "(deploy/kafka/broker.sh) to stop and start, or to add a stopped node to"
    )
    with dedicated_broker(tmp_path / "kafka", needs) as broker:
        yield broker
