"""The declared runtime dependencies, their bounds and the lock files agree with each other and
with what the service imports."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from typing import TYPE_CHECKING, cast

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from service.app import registry_client
from tests.conftest import ROOT, project_settings

if TYPE_CHECKING:  # for the checker only: importing it is what registry_client is tested on
    from confluent_kafka.schema_registry import AsyncSchemaRegistryClient

_PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)(?: ; ([^\\\n]+?))?\s*\\?$", re.MULTILINE)
"""`name==version`, and the environment marker of a universal lock's line, if any."""


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(r) for r in found]


def _pins(lock: str) -> dict[str, Version]:
    text = (ROOT / lock).read_text()
    return {
        canonicalize_name(n): Version(v)
        for n, v, marker in _PIN.findall(text)
        if not marker or Marker(marker).evaluate()  # the pin for this interpreter
    }


TEST_ONLY = {ROOT / "service" / "testing.py"}
"""Doubles for tests (`service.testing`): they need the dev extra, like the suite itself."""


def _imports(*, module_level: bool) -> set[str]:
    """Top-level names of the third-party modules service/ imports at module level, or inside
    functions (the lazy imports of optional commands such as `herald outbox`) and in the
    test-only modules."""
    found: set[str] = set()
    for path in (ROOT / "service").rglob("*.py"):
        if module_level and path in TEST_ONLY:
            continue
        tree = ast.parse(path.read_text(), str(path))
        nodes = tree.body if module_level else ast.walk(tree)
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"service", "__future__"}


def _undeclared(modules: set[str], requirements: list[Requirement]) -> dict[str, list[str]]:
    declared = {canonicalize_name(r.name) for r in requirements}
    distributions = importlib.metadata.packages_distributions()
    return {
        module: sorted(distributions.get(module, ["?"]))
        for module in modules
        if not declared & {canonicalize_name(d) for d in distributions.get(module, [])}
    }


def test_every_third_party_module_the_service_imports_is_a_declared_dependency() -> None:
    """Module-level imports need a runtime dependency (one that arrives only as someone else's
    would vanish with it); imports inside functions at least a dev one."""
    assert {} == _undeclared(_imports(module_level=True), _declared())
    everything = _declared() + _declared("dev")
    assert {} == _undeclared(_imports(module_level=False), everything)


def test_runtime_dependencies_have_upper_bounds_that_the_lock_meets() -> None:
    """Each requirement stops below an untested major, and requirements.lock pins it inside."""
    pins = _pins("requirements.lock")
    for req in _declared():
        assert any(s.operator == "<" for s in req.specifier), f"{req} has no upper bound"
        version = pins.get(canonicalize_name(req.name))
        assert version is not None, f"{req.name} is not in requirements.lock: run `make lock`"
        assert req.specifier.contains(version), f"{req.name}=={version} outside {req}"


def test_the_dev_lock_pins_the_runtime_lock_versions_and_every_pin_has_hashes() -> None:
    """One set of runtime versions, whichever lock installed it; pip checks the hashes."""
    runtime, dev = _pins("requirements.lock"), _pins("requirements-dev.lock")
    assert {} == {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    for lock in ("requirements.lock", "requirements-dev.lock"):
        text = (ROOT / lock).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert [] == [b.split()[0] for b in blocks if "--hash=sha256:" not in b]


def test_the_installed_environment_matches_the_dev_lock() -> None:
    """`make install` installed exactly the locked versions (a stale .venv fails here)."""
    mismatched = {}
    for name, version in _pins("requirements-dev.lock").items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            continue  # an environment marker left it out on this platform
        if installed != version:
            mismatched[name] = (str(version), str(installed))
    assert {} == mismatched


async def test_the_schema_registry_client_needs_only_the_schemaregistry_extra() -> None:
    """The client Herald builds imports with the extra's dependencies; `avro` is not locked."""
    client = cast(  # given a URL, registry_client makes one
        "AsyncSchemaRegistryClient",
        registry_client(project_settings(registry={"url": "http://127.0.0.1:1"})),
    )
    assert "AsyncSchemaRegistryClient" == type(client).__name__
    await client.aclose()
    confluent = next(r for r in _declared() if canonicalize_name(r.name) == "confluent-kafka")
    assert {"schemaregistry"} == confluent.extras
    assert {"avro", "requests"}.isdisjoint(_pins("requirements.lock"))
