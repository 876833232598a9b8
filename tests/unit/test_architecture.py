"""The import contract in pyproject.toml holds, and breaks when a forbidden import appears."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_import_contract_is_kept() -> None:
    result = _lint(ROOT)
    assert 0 == result.returncode, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_against_the_arrows_breaks_it(tmp_path: Path) -> None:
    """A copy of the package where the Kafka adapter imports the flow: the check fails."""
    shutil.copytree(ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    records = tmp_path / "service" / "kafka" / "records.py"
    records.write_text(records.read_text() + "\nimport service.flow.lane  # noqa\n")
    result = _lint(tmp_path)
    assert 1 == result.returncode, result.stdout + result.stderr
    assert "service.kafka.records -> service.flow.lane" in result.stdout
