"""What the operations tests share: the repository root, the tools they run, and Herald's own
settings check applied to a set of environment variables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

# ConfigError through service.settings, which raises it: tests/ops reach into Herald through
# service.settings and service.app only, whatever the package's layout. The ignore: it is not
# in service.settings.__all__, so mypy takes it for an import of that module's own.
from service.settings import (  # type: ignore[attr-defined]
    ENV_PREFIX,
    SECRETS_DIR_VARIABLE,
    ConfigError,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.33.0"
"""The Kubernetes version the chart's manifests are validated against (docs/deploy.md)."""


def venv_tool(name: str) -> str:
    """A console script installed beside this interpreter (the dev extra's tools)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make install`")
    return found


def helm_binary() -> str:
    """The Helm that `make helm` builds; `make test` exports its path as HELM."""
    path: str | Path | None
    if path := os.environ.get("HELM"):
        return path
    version = re.search(r"^HELM_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert version is not None
    cache = Path(os.environ.get("HERALD_CACHE_DIR", Path.home() / ".cache" / "herald"))
    path = cache / "bin" / f"helm-{version.group(1)}"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make helm`")
    return str(path)


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing its output, without raising on a non-zero exit."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def settings_problem(
    env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch, secrets_dir: Path | None = None
) -> str | None:
    """What Herald's start-up would refuse in this environment (with this secrets directory),
    as `load_settings` says it; None when it would start. Other HERALD_* variables are cleared."""
    for var in list(os.environ):
        if var.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(var)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    if secrets_dir is not None:
        monkeypatch.setenv(SECRETS_DIR_VARIABLE, str(secrets_dir))
    try:
        load_settings()
    except ConfigError as exc:
        return str(exc)
    return None
