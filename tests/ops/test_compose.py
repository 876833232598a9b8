"""deploy/compose.yaml: valid against the Compose Specification's schema, and consistent with
itself, with the repository and with Herald's settings."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.ops.conftest import ROOT, settings_problem

COMPOSE = ROOT / "deploy" / "compose.yaml"
SCHEMA = Path(__file__).parent / "compose-spec" / "compose-spec.json"
HERALD_IMAGE = "localhost/herald:dev"


def load() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of a service's bind mounts, in short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def problems(document: dict[str, Any], tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Everything wrong with a Compose document laid out as deploy/compose.yaml."""
    base = COMPOSE.parent
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    found = [
        f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]
    services: dict[str, dict[str, Any]] = document.get("services", {})
    secrets: dict[str, dict[str, Any]] = document.get("secrets", {})
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            if dependency not in services:
                found.append(f"{name}: depends_on names no service: {dependency}")
        for source, _ in bind_mounts(service):
            path = (base / source).resolve()
            if not path.exists():
                found.append(f"{name}: mounts a missing file: {source}")
        if build := service.get("build"):
            context = base / build["context"]
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                found.append(f"{name}: no Dockerfile in {build['context']}")
        for secret in service.get("secrets", []):
            if secret["source"] not in secrets:
                found.append(f"{name}: names no secret: {secret['source']}")
    for name, secret in secrets.items():
        if not (base / secret["file"]).is_file():
            found.append(f"secret {name}: missing file {secret['file']}")
    for name, service in services.items():
        if service.get("image") != HERALD_IMAGE:
            continue
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        secrets_dir = None
        if service.get("secrets"):
            # The files Compose would mount, laid out in a directory of their own.
            secrets_dir = tmp / name
            secrets_dir.mkdir()
            assert "/run/secrets" == env["HERALD_SECRETS_DIR"]
            for secret in service["secrets"]:
                if secret["source"] in secrets:
                    content = (base / secrets[secret["source"]]["file"]).read_text()
                    (secrets_dir / secret["target"]).write_text(content)
        if problem := settings_problem(env, monkeypatch, secrets_dir):
            found.append(f"{name}: Herald would not start: {problem}")
    return found


def test_compose_file_is_valid_and_consistent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schema accepts the file; every dependency, mount, secret and Dockerfile it names
    exists; Herald's environment (and secret files) is a configuration Herald accepts."""
    assert [] == problems(load(), tmp_path, monkeypatch)


def test_compose_wires_herald_to_the_stack() -> None:
    """Herald reaches Kafka, Redis, Mailpit and the registry by their service names, on the
    ports those services listen on; Prometheus scrapes Herald and loads the rule file it
    mounts; Grafana reads the dashboard where it mounts it, from that Prometheus."""
    services = load()["services"]
    env = services["herald"]["environment"]
    assert "kafka:9092" == env["HERALD_KAFKA__BOOTSTRAP_SERVERS"]
    assert "INTERNAL://kafka:9092" in services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert ("mailpit", "1025", "none") == (
        env["HERALD_SMTP__HOST"],
        env["HERALD_SMTP__PORT"],
        env["HERALD_SMTP__TLS"],
    )
    assert env["HERALD_REGISTRY__URL"].startswith("http://registry:8080/")
    redis_url = (ROOT / "deploy/compose/secrets/HERALD_IDEMPOTENCY__REDIS_URL").read_text()
    assert ("redis", "redis://redis:6379/0") == (
        env["HERALD_IDEMPOTENCY__BACKEND"],
        redis_url.strip(),
    )
    assert "127.0.0.1:9464:9464" in services["herald"]["ports"]

    prometheus = yaml.safe_load((ROOT / "deploy/compose/prometheus.yml").read_text())
    mounts = dict(bind_mounts(services["prometheus"]))
    assert ["herald:9464"] == prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
    assert [mounts["./prometheus/herald-rules.yaml"]] == prometheus["rule_files"]

    grafana = dict(bind_mounts(services["grafana"]))
    provisioning = ROOT / "deploy/grafana/provisioning"
    provider = yaml.safe_load((provisioning / "dashboards/herald.yaml").read_text())
    datasource = yaml.safe_load((provisioning / "datasources/prometheus.yaml").read_text())
    assert "/etc/grafana/provisioning" == grafana["./grafana/provisioning"]
    dashboard_dir = Path(grafana["./grafana/herald.json"]).parent
    assert str(dashboard_dir) == provider["providers"][0]["options"]["path"]
    assert "http://prometheus:9090" == datasource["datasources"][0]["url"]


def _with(change: str) -> dict[str, Any]:
    """deploy/compose.yaml with one mistake made in it."""
    document = copy.deepcopy(load())
    services = document["services"]
    if change == "unknown dependency":
        services["herald"]["depends_on"]["zookeeper"] = {"condition": "service_started"}
    elif change == "misspelt key":
        services["redis"]["enviroment"] = {"A": "b"}
    elif change == "misspelt setting":
        services["herald"]["environment"]["HERALD_SMTP__HOSTT"] = "mailpit"
    elif change == "invalid setting":
        services["herald"]["environment"]["HERALD_SMTP__TLS"] = "sometimes"
    elif change == "missing mount":
        services["prometheus"]["volumes"][0] = "./compose/prometheus.yaml:/etc/prometheus/p.yml"
    elif change == "missing secret":
        services["herald"]["secrets"][0]["source"] = "redis-password"
    return document


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("unknown dependency", "herald: depends_on names no service: zookeeper"),
        ("misspelt key", "schema: services/redis: 'enviroment' does not match any of the regexes"),
        ("misspelt setting", "herald: Herald would not start: environment: HERALD_SMTP__HOSTT"),
        ("invalid setting", "herald: Herald would not start: environment: HERALD_SMTP__TLS"),
        ("missing mount", "prometheus: mounts a missing file: ./compose/prometheus.yaml"),
        ("missing secret", "herald: names no secret: redis-password"),
    ],
)
def test_a_broken_compose_file_is_caught(
    change: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each kind of mistake in the file is reported, naming where it is."""
    found = problems(_with(change), tmp_path, monkeypatch)
    assert any(p.startswith(expected) for p in found), found


def test_published_ports_are_loopback_only() -> None:
    """Nothing of the stack listens beyond the machine it runs on."""
    for name, service in load()["services"].items():
        for port in service.get("ports", []):
            assert re.match(r"127\.0\.0\.1:\d+:\d+$", port), (name, port)
