"""`herald check-config` and `herald run`: a broken routing table stops with file, key and fix;
a setting that weakens security is warned of."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, SECRETS_ENV


def _check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "check-config"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            **SECRETS_ENV,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_project() -> None:
    from service.app import load
    from tests.conftest import project_settings

    loaded = load(project_settings())
    routes = sum(len(r) for r in loaded.table.routes.values())
    out = _check({})
    assert 0 == out.returncode, out.stderr
    assert f"configuration OK: {len(loaded.bindings)} topics, {routes} routes" in out.stdout


def test_check_config_rejects_a_broken_table(tmp_path: Path) -> None:
    table = (ROOT / "deploy" / "routing.yaml").read_text()
    broken = tmp_path / "routing.yaml"
    broken.write_text(table.replace("category: security", "category: urgent"))
    out = _check({"HERALD_ROUTING_FILE": str(broken)})
    assert 2 == out.returncode
    assert (
        f"herald: configuration error: {broken}: "
        "events.login.suspicious.notifications[0].category: Input should be"
    ) in out.stderr
    assert "Fix: use one of the allowed values" in out.stderr


def test_check_config_rejects_a_missing_template(tmp_path: Path) -> None:
    table = (ROOT / "deploy" / "routing.yaml").read_text()
    broken = tmp_path / "routing.yaml"
    broken.write_text(table.replace("template: order_receipt", "template: order_reciept"))
    out = _check({"HERALD_ROUTING_FILE": str(broken)})
    assert 2 == out.returncode
    assert "events.order.confirmed.notifications[0].template" in out.stderr
    assert "order_reciept" in out.stderr


def test_check_config_rejects_a_bad_variable() -> None:
    out = _check({"HERALD_SMTP__TLS": "maybe"})
    assert 2 == out.returncode
    assert "environment: HERALD_SMTP__TLS" in out.stderr


def test_unverified_certificates_are_warned_of_but_accepted() -> None:
    """`check-config` prints the warning of `HERALD_SMTP__VALIDATE_CERTS=false` and passes."""
    out = _check({"HERALD_SMTP__VALIDATE_CERTS": "false"})
    assert 0 == out.returncode, out.stderr
    assert "herald check-config: warning: HERALD_SMTP__VALIDATE_CERTS=false: " in out.stderr
    assert "warning" not in _check({}).stderr


def test_run_logs_the_warning_at_start_up(tmp_path: Path) -> None:
    """`herald run` logs one warning line for it before anything else (here, before a missing
    routing table stops it)."""
    out = subprocess.run(
        [sys.executable, "-m", "service", "run"],
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HERALD_SMTP__VALIDATE_CERTS": "false",
            "HERALD_ROUTING_FILE": str(tmp_path / "absent.yaml"),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert 2 == out.returncode
    first = json.loads(out.stderr.splitlines()[0])
    assert ("warning", "configuration weakens security") == (first["level"], first["event"])
    assert first["warning"].startswith("HERALD_SMTP__VALIDATE_CERTS=false: ")
