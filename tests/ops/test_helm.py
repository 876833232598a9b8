"""deploy/helm/herald: `helm lint --strict`, `helm template` with the default values and with
every option on, each manifest valid for Kubernetes (kubernetes-validate --strict) or for its
operator (KEDA, Prometheus Operator models), wired to Herald as Herald runs, and refused when
a value would make a Herald that cannot work."""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor
from pydantic import BaseModel

from service.app import load
from tests.conftest import project_settings
from tests.ops.conftest import (
    KUBERNETES_VERSION,
    ROOT,
    helm_binary,
    run,
    settings_problem,
    venv_tool,
)

CHART = ROOT / "deploy" / "helm" / "herald"
EVERYTHING = CHART / "ci" / "everything-values.yaml"
RULES = ROOT / "deploy" / "prometheus" / "herald-rules.yaml"
CHART_RULES = CHART / "files" / "herald-rules.yaml"
OPERATOR_MODELS: dict[str, type[BaseModel]] = {
    "ScaledObject": ScaledObject,
    "ServiceMonitor": ServiceMonitor,
    "PrometheusRule": PrometheusRule,
}
"""Custom resources, which kubernetes-validate has no schema for, and their operators' models."""


def documented_rules() -> str:
    """The alert rules of docs/operations.md ("Metrics and alerts"), as a rule file."""
    text = (ROOT / "docs" / "operations.md").read_text()
    block = re.search(r"```yaml\n(groups:\n.*?)```", text, re.S)
    assert block is not None, "docs/operations.md has no rule block"
    return block.group(1)


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart as the tests render it: the repository's, with its rules copy; until the
    rule file of deploy/prometheus/ reaches this branch, the rules docs/operations.md gives."""
    copy_dir = tmp_path_factory.mktemp("chart") / "herald"
    shutil.copytree(CHART, copy_dir)
    if not CHART_RULES.exists():
        (copy_dir / "files" / "herald-rules.yaml").write_text(documented_rules())
    return copy_dir


def helm(*args: str) -> tuple[int, str]:
    result = run(helm_binary(), *args)
    return result.returncode, result.stdout + result.stderr


def render(chart: Path, *args: str) -> list[dict[str, Any]]:
    """`helm template` of the chart, as manifests; fails the test if Helm refuses."""
    code, out = helm("template", "t", str(chart), "--kube-version", KUBERNETES_VERSION, *args)
    assert 0 == code, out
    return [d for d in yaml.safe_load_all(out) if d]


def refusal(chart: Path, *args: str) -> str:
    """What `helm template` says when it refuses the values; fails the test if it renders."""
    code, out = helm("template", "t", str(chart), "--kube-version", KUBERNETES_VERSION, *args)
    assert 0 != code, "rendered, but should have been refused"
    return out


def one(manifests: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(suffix)]
    assert 1 == len(found), [m["metadata"]["name"] for m in found]
    return found[0]


@pytest.fixture(scope="module")
def default(chart: Path) -> list[dict[str, Any]]:
    return render(chart)


@pytest.fixture(scope="module")
def everything(chart: Path) -> list[dict[str, Any]]:
    return render(chart, "-f", str(EVERYTHING))


@pytest.mark.parametrize("values", [[], ["-f", str(EVERYTHING)]], ids=["default", "everything"])
def test_helm_lint_strict(chart: Path, values: list[str]) -> None:
    """`helm lint --strict` passes with the default values and with every option on."""
    code, out = helm("lint", "--strict", str(chart), "--kube-version", KUBERNETES_VERSION, *values)
    assert 0 == code, out
    assert "0 chart(s) failed" in out


def test_rendered_kinds(default: list[dict[str, Any]], everything: list[dict[str, Any]]) -> None:
    """By default, Herald without operators, with its internal and public Services;
    everything on adds the Secret, the routing ConfigMap, the Ingress of the public listener
    and the custom resources."""
    assert [
        "ConfigMap",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ] == sorted(m["kind"] for m in default)
    assert [
        "ConfigMap",
        "ConfigMap",
        "Ingress",
        "PodDisruptionBudget",
        "PrometheusRule",
        "ScaledObject",
        "Secret",
        "Service",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "StatefulSet",
    ] == sorted(m["kind"] for m in everything)


def test_public_listener_has_its_own_port_service_and_ingress(
    everything: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The public listener listens on all interfaces at the container's `http-public` port;
    its Service selects the pods and targets that port, the Ingress routes the one-click host
    over TLS to that Service, and nothing routes to the internal port."""
    pod = one(everything, "StatefulSet")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = pod_environment(everything, "t-herald-0")
    everywhere = "0.0.0.0"  # noqa: S104 (the pod listens on its interfaces)
    assert (everywhere, str(ports["http-public"])) == (
        env["HERALD_PUBLIC__HOST"],
        env["HERALD_PUBLIC__PORT"],
    )
    assert ports["http-public"] != ports["http-internal"]
    service = one(everything, "Service", "-public")
    assert "ClusterIP" == service["spec"]["type"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert [("http-public", 80, "http-public")] == [
        (p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]
    ]
    ingress = one(everything, "Ingress")["spec"]
    assert [{"hosts": ["mail.example.com"], "secretName": "herald-public-tls"}] == ingress["tls"]
    backends = [
        path["backend"]["service"] for rule in ingress["rules"] for path in rule["http"]["paths"]
    ]
    assert [{"name": service["metadata"]["name"], "port": {"name": "http-public"}}] == backends


def test_public_listener_off_leaves_no_port_or_service(chart: Path) -> None:
    """public.enabled=false: Herald runs without the listener, and the chart renders no port,
    Service or Ingress for it."""
    manifests = render(chart, "--set", "public.enabled=false")
    assert "false" == pod_environment(manifests, "t-herald-0")["HERALD_PUBLIC__ENABLED"]
    container = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert ["http-internal"] == [p["name"] for p in container["ports"]]
    assert ["t-herald-internal"] == [
        m["metadata"]["name"] for m in manifests if m["kind"] in ("Service", "Ingress")
    ]


@pytest.mark.parametrize("which", ["default", "everything"])
def test_manifests_are_valid_kubernetes(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every built-in manifest passes kubernetes-validate --strict for the stated version;
    only the custom resources are left to their operators' models."""
    manifests: list[dict[str, Any]] = request.getfixturevalue(which)
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    result = run(venv_tool("kubernetes-validate"), "-k", KUBERNETES_VERSION, "--strict", str(path))
    assert 0 == result.returncode, result.stdout + result.stderr
    passed = re.findall(r"passed for resource (\w+)/", result.stdout + result.stderr)
    builtin = [m["kind"].lower() for m in manifests if m["kind"] not in OPERATOR_MODELS]
    assert sorted(builtin) == sorted(passed)


def _unknown_fields(given: Any, kept: Any, path: str = "") -> list[str]:
    """Keys of `given` that the model dropped: the models ignore unknown fields."""
    if isinstance(given, dict) and isinstance(kept, dict):
        return [
            problem
            for key, value in given.items()
            for problem in (
                [f"{path}/{key}"]
                if key not in kept
                else _unknown_fields(value, kept[key], f"{path}/{key}")
            )
        ]
    if isinstance(given, list) and isinstance(kept, list):
        return [p for g, k in zip(given, kept, strict=False) for p in _unknown_fields(g, k, path)]
    return []


def test_custom_resources_are_valid_for_their_operators(everything: list[dict[str, Any]]) -> None:
    """ScaledObject, ServiceMonitor and PrometheusRule validate against the KEDA and Prometheus
    Operator models, with no field those models do not know."""
    for manifest in everything:
        model = OPERATOR_MODELS.get(manifest["kind"])
        if model is None:
            continue
        parsed = model.model_validate(manifest)
        kept = parsed.model_dump(mode="json", by_alias=True, exclude_unset=True)
        assert [] == _unknown_fields(manifest, kept), manifest["kind"]


def test_operator_models_refuse_a_broken_resource(everything: list[dict[str, Any]]) -> None:
    """The models are live checks: a ScaledObject without a target name is refused."""
    broken = copy.deepcopy(one(everything, "ScaledObject"))
    del broken["spec"]["scaleTargetRef"]["name"]
    with pytest.raises(ValueError, match=r"scaleTargetRef\.name"):
        ScaledObject.model_validate(broken)


def pod_environment(manifests: list[dict[str, Any]], pod: str) -> dict[str, str]:
    """The HERALD_* environment a pod of the StatefulSet gets, downward API resolved."""
    container = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env.update(one(manifests, "ConfigMap", source["configMapRef"]["name"][-4:])["data"])
    for var in container["env"]:
        if "valueFrom" in var:
            assert {"fieldRef": {"fieldPath": "metadata.name"}} == var["valueFrom"]
            env[var["name"]] = pod
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], var["value"])
    return {k: v for k, v in env.items() if k.startswith("HERALD_")}


@pytest.mark.parametrize("which", ["default", "everything"])
def test_pod_environment_is_a_configuration_herald_accepts(
    which: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's variables, the downward API's and the Secret's files together make
    settings Herald starts with; each pod's transactional id is its prefixed pod name."""
    manifests: list[dict[str, Any]] = request.getfixturevalue(which)
    env = pod_environment(manifests, "t-herald-1")
    secrets_dir = None
    if "HERALD_SECRETS_DIR" in env:
        secrets_dir = tmp_path
        for key, value in one(manifests, "Secret")["stringData"].items():
            (tmp_path / key).write_text(value)
        mounts = one(manifests, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
        assert env["HERALD_SECRETS_DIR"] in [m["mountPath"] for m in mounts["volumeMounts"]]
    assert None is settings_problem(env, monkeypatch, secrets_dir)
    prefix = "mail." if which == "everything" else ""
    assert f"{prefix}t-herald-1" == env["HERALD_KAFKA__TRANSACTIONAL_ID"]


def test_numbers_from_a_values_file_are_written_as_herald_reads_them(
    chart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Helm reads a values file's numbers as floats; whole ones still reach the environment as
    integers (2097152, not 2.097152e+06), which Herald's integer settings accept."""
    values = tmp_path / "values.yaml"
    values.write_text(
        "shutdownTimeoutSeconds: 3000000\n"
        "config:\n"
        "  HERALD_IDEMPOTENCY__BACKEND: sqlite\n"
        "  HERALD_PROCESSING__MAX_RECORD_BYTES: 2097152\n"
        "  HERALD_SMTP__TIMEOUT_S: 12.5\n"
        "  HERALD_SMTP__VALIDATE_CERTS: true\n"
    )
    env = pod_environment(render(chart, "-f", str(values)), "t-herald-0")
    assert ("3000000", "2097152", "12.5", "true") == (
        env["HERALD_PROCESSING__SHUTDOWN_TIMEOUT_S"],
        env["HERALD_PROCESSING__MAX_RECORD_BYTES"],
        env["HERALD_SMTP__TIMEOUT_S"],
        env["HERALD_SMTP__VALIDATE_CERTS"],
    )
    assert None is settings_problem(env, monkeypatch)


def test_routing_from_values_loads_with_the_image_files(
    everything: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The routing table of the everything values, as its ConfigMap holds it, loads with the
    schemas and templates the image carries; it is mounted where the image looks for it."""
    routing = tmp_path / "routing.yaml"
    routing.write_text(one(everything, "ConfigMap", "-routing")["data"]["routing.yaml"])
    loaded = load(project_settings(routing_file=routing))
    assert {"user.signed_up", "password.reset_requested"} == set(loaded.table.events)
    container = one(everything, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "routing", "mountPath": "/etc/herald", "readOnly": True} in container[
        "volumeMounts"
    ]


def test_grace_period_is_the_drain_plus_a_margin(chart: Path) -> None:
    """terminationGracePeriodSeconds follows HERALD_PROCESSING__SHUTDOWN_TIMEOUT_S: 30 + 45 by
    default, and moves with it."""
    for timeout, grace in [(None, 75), (100, 145)]:
        extra = [] if timeout is None else ["--set", f"shutdownTimeoutSeconds={timeout}"]
        manifests = render(chart, *extra)
        spec = one(manifests, "StatefulSet")["spec"]["template"]["spec"]
        assert grace == spec["terminationGracePeriodSeconds"]
        drain = pod_environment(manifests, "t-herald-0")["HERALD_PROCESSING__SHUTDOWN_TIMEOUT_S"]
        assert grace - 45 == int(drain)


def test_probes_service_and_monitor_share_the_internal_port(
    everything: list[dict[str, Any]],
) -> None:
    """Liveness on /healthz, readiness on /readyz, the Service and the ServiceMonitor on the
    container's one port; the monitor selects that Service and the budget the pods."""
    statefulset = one(everything, "StatefulSet")
    pod = statefulset["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert {"name": "http-internal", "containerPort": 9464, "protocol": "TCP"} in container["ports"]
    assert "/healthz" == container["livenessProbe"]["httpGet"]["path"]
    assert "/healthz" == container["startupProbe"]["httpGet"]["path"]
    assert "/readyz" == container["readinessProbe"]["httpGet"]["path"]
    service = one(everything, "Service", "-internal")
    assert "http-internal" == service["spec"]["ports"][0]["targetPort"]
    assert service["metadata"]["name"] == statefulset["spec"]["serviceName"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    monitor = one(everything, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "http-internal" == monitor["endpoints"][0]["port"]
    budget = one(everything, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert budget.items() <= pod["metadata"]["labels"].items()


def test_resources_and_security(default: list[dict[str, Any]]) -> None:
    """Requests from the measured figures (one core, RSS ~82 MiB under 128Mi), no CPU limit;
    a non-root, read-only container as the image's uid."""
    pod = one(default, "StatefulSet")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {"requests": {"cpu": "1", "memory": "128Mi"}, "limits": {"memory": "256Mi"}} == (
        container["resources"]
    )
    assert (True, 10001) == (
        pod["securityContext"]["runAsNonRoot"],
        pod["securityContext"]["runAsUser"],
    )
    assert container["securityContext"]["readOnlyRootFilesystem"]


def test_scaled_object_scales_the_statefulset_on_input_topics(
    everything: list[dict[str, Any]],
) -> None:
    """One Kafka trigger per listed input topic on Herald's group, never more replicas than
    partitions, and the StatefulSet leaves its replica count to the autoscaler."""
    values = yaml.safe_load(EVERYTHING.read_text())
    scaled = one(everything, "ScaledObject")["spec"]
    statefulset = one(everything, "StatefulSet")
    assert ("StatefulSet", statefulset["metadata"]["name"]) == (
        scaled["scaleTargetRef"]["kind"],
        scaled["scaleTargetRef"]["name"],
    )
    assert values["autoscaling"]["topics"] == [t["metadata"]["topic"] for t in scaled["triggers"]]
    assert {"kafka"} == {t["type"] for t in scaled["triggers"]}
    assert {values["kafka"]["groupId"]} == {
        t["metadata"]["consumerGroup"] for t in scaled["triggers"]
    }
    assert not any(".retry." in t["metadata"]["topic"] for t in scaled["triggers"])
    assert scaled["maxReplicaCount"] <= values["kafka"]["partitions"]
    assert "replicas" not in statefulset["spec"]


REDIS = ["--set", "config.HERALD_IDEMPOTENCY__BACKEND=redis", "--set", "persistence.enabled=false"]
AUTOSCALED = [*REDIS, "--set", "autoscaling.enabled=true", "--set", "autoscaling.topics={a}"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set-string", "replicaCount=two"], "replicaCount: Invalid type"),
        (["--set", "replicas=2"], "Additional property replicas is not allowed"),
        (["--set", "config.herald_smtp__host=x"], "herald_smtp__host"),
        (["--set", "config.HERALD_KAFKA__GROUP_ID=x"], "config.HERALD_KAFKA__GROUP_ID: the chart"),
        (
            ["--set", "replicaCount=2"],
            "up to 2 instances need config.HERALD_IDEMPOTENCY__BACKEND=redis",
        ),
        (["--set", "persistence.enabled=false"], "SQLite idempotency store needs persistence"),
        ([*REDIS, "--set", "replicaCount=4"], "replicaCount (4) exceeds kafka.partitions (3)"),
        (
            [*AUTOSCALED, "--set", "autoscaling.maxReplicaCount=4"],
            "autoscaling.maxReplicaCount (4) exceeds kafka.partitions (3)",
        ),
        ([*REDIS, "--set", "autoscaling.enabled=true"], "autoscaling.topics: list the input"),
        (
            ["--set", "secrets.values.HERALD_SMTP__PASSWORD=x"],
            "secrets.values: HERALD_POLICY__ADDRESS_KEY is missing",
        ),
        (["--set", "config.HERALD_PUBLIC__PORT=1"], "config.HERALD_PUBLIC__PORT: the chart"),
        (["--set", "public.ingress.enabled=true"], "public.ingress.host: the host"),
        (
            [
                "--set",
                "public.enabled=false",
                "--set",
                "public.ingress.enabled=true",
                "--set",
                "public.ingress.host=mail.example.com",
            ],
            "public.ingress.enabled needs public.enabled",
        ),
    ],
)
def test_bad_values_are_refused(chart: Path, args: list[str], expected: str) -> None:
    """A value of the wrong type or name, or one that would make a Herald that cannot work
    (an idempotency store instances do not share, more instances than partitions), stops
    `helm template` with a message naming it."""
    assert expected in refusal(chart, *args)


def test_prometheus_rule_needs_the_rule_file(tmp_path: Path) -> None:
    """Without files/herald-rules.yaml the PrometheusRule is refused, not rendered empty."""
    bare = tmp_path / "herald"
    shutil.copytree(CHART, bare)
    (bare / "files" / "herald-rules.yaml").unlink(missing_ok=True)
    assert "run `make chart-rules`" in refusal(bare, "--set", "prometheusRule.enabled=true")


def test_prometheus_rule_carries_the_rule_file(
    chart: Path, everything: list[dict[str, Any]]
) -> None:
    """The PrometheusRule's groups are the rule file's, unchanged."""
    rules = yaml.safe_load((chart / "files" / "herald-rules.yaml").read_text())
    assert rules["groups"] == one(everything, "PrometheusRule")["spec"]["groups"]


@pytest.mark.xfail(
    not RULES.exists(),
    strict=True,
    reason="deploy/prometheus/herald-rules.yaml comes from another branch of the operations "
    "kit; once merged, `make chart-rules` and commit the copy",
)
def test_chart_rules_copy_is_current() -> None:
    """The chart's copy of the rule file is the one Prometheus loads (`make chart-rules`)."""
    assert CHART_RULES.exists(), "no copy in the chart: run `make chart-rules`"
    assert RULES.read_text() == CHART_RULES.read_text(), "stale copy: run `make chart-rules`"
