"""Fixtures shared by every test: the project's real schemas, table and templates."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, MutableMapping
from datetime import UTC, datetime
from email.message import MIMEPart
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing

from service.app import Loaded, load
from service.events.model import Event, Recipient
from service.events.schemas import SchemaStore
from service.policy.pace import Pace
from service.policy.state import PolicyState
from service.settings import Settings
from service.stores.pace import MemoryPaceStore
from service.stores.running import open_caps, open_tables
from service.tools.examples import example_event, load_example

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "schemas" / "examples"
UNSUBSCRIBE_SECRET = "test-only-unsubscribe-key"
"""Signs the one-click links of optional mail in tests; Herald refuses to start without one."""
ADDRESS_KEY = "test-only-address-key-0123456789abcdef"
"""Keys the digests suppressions are stored under; Herald refuses to start without one."""
SECRETS_ENV = {
    "HERALD_LINKS__UNSUBSCRIBE_SECRET": UNSUBSCRIBE_SECRET,
    "HERALD_POLICY__ADDRESS_KEY": ADDRESS_KEY,
}
"""The keys every Herald the suite starts needs, for the environment of a child process."""


def pytest_configure(config: pytest.Config) -> None:
    """Every Herald the suite starts, in this process or a child, has its keys."""
    for name, value in SECRETS_ENV.items():
        os.environ.setdefault(name, value)


def project_settings(**overrides: Any) -> Settings:
    """Settings pointing at the project's own files, whatever the working directory."""
    base: dict[str, Any] = {
        "routing_file": ROOT / "deploy" / "routing.yaml",
        "schemas_dir": ROOT / "schemas",
        "templates_dir": ROOT / "templates",
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture(scope="session")
def loaded() -> Loaded:
    return load(project_settings())


@pytest.fixture(scope="session")
def store(loaded: Loaded) -> SchemaStore:
    return loaded.store


def example_record(loaded: Loaded, event_type: str) -> dict[str, Any]:
    """A deep copy of the example event as an Avro-ready record."""
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return copy.deepcopy(load_example(EXAMPLES / f"{event_type}.json", schema))


def make_event(
    event_type: str, payload: dict[str, Any], *, locale: str = "en", name: str | None = "Ada"
) -> Event:
    """An event built by hand, for stages after decoding."""
    return Event(
        event_id="11111111-2222-3333-4444-555555555555",
        event_type=event_type,
        occurred_at=datetime(2026, 11, 20, 14, 3, 27, tzinfo=UTC),
        recipient=Recipient(
            user_id="u1",
            email="ada@example.com",
            display_name=name,
            locale=locale,
            time_zone="Europe/Paris",
        ),
        payload=payload,
        schema="test",
    )


def event_from_example(loaded: Loaded, event_type: str, **recipient: Any) -> Event:
    schema = loaded.store.reader(loaded.table.events[event_type].schema_)
    assert schema is not None
    return example_event(EXAMPLES / f"{event_type}.json", schema, event_type, **recipient)


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def body_part(msg: MIMEPart, subtype: str) -> MIMEPart:
    """The message's text/`subtype` body part, as `get_body` finds it; none fails the test."""
    part = msg.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    return part


@pytest.fixture
def log_entries() -> Iterator[list[MutableMapping[str, Any]]]:
    """Every structlog entry emitted during the test, with its bound context merged in; the
    configuration it replaces (the integration suite's, for one) comes back afterwards."""
    saved = structlog.get_config()
    capture = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        yield capture.entries
    finally:
        structlog.configure(**saved)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server (Debian's package, installed by `make system-deps`)."""
    import shutil
    import socket
    import subprocess
    import time

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make system-deps`")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path_factory.mktemp("redis")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def local_policy_state(loaded: Loaded, directory: Path) -> PolicyState:
    """The policy stage's state on local files under `directory`: empty tables (filled by a
    test through `tables.apply_*`, as the followers do), embedded caps, the test address key."""
    settings = project_settings(policy={"state_path": directory / "policy.sqlite3"})
    return PolicyState(
        tables=open_tables(settings, loaded.store),
        caps=open_caps(settings),
        address_key=ADDRESS_KEY.encode(),
        categories=loaded.table.categories,
        pace=Pace(settings.pace, MemoryPaceStore()),
        hold_s=settings.pace.hold_s,
    )
