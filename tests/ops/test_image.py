"""The Dockerfile: hadolint-clean, its environment a valid Herald configuration, and the
files it bakes in admitted by .dockerignore and pointed at by that environment."""

from __future__ import annotations

import fnmatch
import shlex
from pathlib import Path

import pytest

from tests.ops.conftest import ROOT, run, settings_problem, venv_tool

DOCKERFILE = ROOT / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, in order."""
    result: list[list[tuple[str, str]]] = []
    for word, args in instructions(text):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, args))
    return result


def final_environment() -> dict[str, str]:
    """The ENV of the final stage (the image's own, not the base's)."""
    env: dict[str, str] = {}
    for word, args in stages(DOCKERFILE.read_text())[-1]:
        if word == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_dockerfile_is_hadolint_clean() -> None:
    """hadolint finds nothing in the Dockerfile, at any level."""
    result = run(venv_tool("hadolint"), "--failure-threshold", "info", str(DOCKERFILE))
    assert (0, "") == (result.returncode, result.stdout + result.stderr)


def test_hadolint_refuses_an_image_that_runs_as_root(tmp_path: Path) -> None:
    """The lint is live: the same Dockerfile switched back to root fails it (DL3002)."""
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = run(venv_tool("hadolint"), str(broken))
    assert 1 == result.returncode
    assert "DL3002" in result.stdout


def test_final_stage_is_slim_non_root_and_runs_herald() -> None:
    """Both stages on python:3.11-slim by default; the final one as uid 10001, `herald run`."""
    text = DOCKERFILE.read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    builder, final = stages(text)
    assert ("FROM", "${PYTHON_IMAGE} AS builder") == builder[0]
    assert ("FROM", "${PYTHON_IMAGE}") == final[0]
    final_words = dict(final)
    assert "10001:10001" == final_words["USER"]
    assert '["herald"]' == final_words["ENTRYPOINT"]
    assert '["run"]' == final_words["CMD"]
    assert "/healthz" in final_words["HEALTHCHECK"]
    # No build tool reaches the final stage: it only copies what the builder made.
    assert all(
        args.startswith("--from=builder ") for word, args in final if word in ("COPY", "ADD")
    )


def test_image_environment_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every HERALD_* variable the image sets is a setting with a valid value."""
    env = final_environment()
    # A container's endpoint must answer beyond its loopback, for probes and scrapes.
    assert "0.0.0.0" == env["HERALD_HTTP__HOST"]  # noqa: S104
    assert None is settings_problem(env, monkeypatch)


def test_baked_files_are_where_the_environment_points() -> None:
    """The routing table, schemas and templates are copied to the paths the final stage's
    variables name, from the repository paths the project keeps them at."""
    builder = stages(DOCKERFILE.read_text())[0]
    copies = {
        args.split()[1]: args.split()[0]
        for word, args in builder
        if word == "COPY" and len(args.split()) == 2
    }
    env = final_environment()
    assert "deploy/routing.yaml" == copies[env["HERALD_ROUTING_FILE"]]
    assert "schemas/" == copies[env["HERALD_SCHEMAS_DIR"] + "/"]
    assert "templates/" == copies[env["HERALD_TEMPLATES_DIR"] + "/"]


def admitted(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore lets `path` into the build context: the last matching pattern,
    or one matching a parent directory, decides; `!` admits."""
    verdict = True
    for pattern in patterns:
        keep = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        parts = Path(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, bare) for p in prefixes):
            verdict = keep
    return verdict


def test_dockerignore_admits_what_the_build_copies() -> None:
    """Each file a COPY takes from the context passes .dockerignore; .venv, var and .git do
    not enter the context."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = {
        source
        for stage in stages(DOCKERFILE.read_text())
        for word, args in stage
        if word == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    files = [
        str(f.relative_to(ROOT))
        for source in sources
        for f in ([ROOT / source] if (ROOT / source).is_file() else (ROOT / source).rglob("*"))
        if f.is_file() and "__pycache__" not in f.parts
    ]
    assert files
    assert [] == [f for f in files if not admitted(f, patterns)]
    assert not any(admitted(p, patterns) for p in [".venv/bin/python", "var/x", ".git/HEAD"])
