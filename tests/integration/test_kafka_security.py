"""Herald on Kafka's SASL_SSL listener (SCRAM-SHA-512 over TLS), configured as an operator
does: `HERALD_KAFKA__CONFIG` for the connection, `HERALD_KAFKA__SECRET_CONFIG` for the password."""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
import pytest

from service.app import Loaded
from service.settings import Settings
from service.testing import SmtpServer
from tests.addresses import clear_addresses
from tests.conftest import ROOT, SECRETS_ENV, example_record
from tests.integration.conftest import (
    SaslSsl,
    create_topics,
    produce,
    read_topic,
    running,
    wait_for,
)

SCHEMAS = ROOT / "schemas"


def _single_object(schema_name: str, record: dict[str, Any]) -> bytes:
    """Avro single-object encoding (Avro spec): C3 01, the CRC-64-AVRO fingerprint, the body."""
    schema = fastavro.schema.load_schema(str(SCHEMAS / f"{schema_name}.avsc"))
    canonical = fastavro.schema.to_parsing_canonical_form(schema)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, record)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    return b"\xc3\x01" + fingerprint + body.getvalue()


def _outcome(value: bytes) -> Any:
    assert b"\xc3\x01" == value[:2]
    schema = fastavro.schema.load_schema(str(SCHEMAS / "herald.outcomes.NotificationOutcome.avsc"))
    return fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)


def _plaintext(settings: Settings, sasl: SaslSsl) -> Settings:
    """The same topics through the broker's plain listener, for the test's own clients."""
    kafka = settings.kafka.model_copy(
        update={"bootstrap_servers": sasl.plaintext, "config": {}, "secret_config": {}}
    )
    return settings.model_copy(update={"kafka": kafka})


async def test_herald_sends_over_sasl_ssl_with_settings_from_the_environment(
    make_settings: Any,
    smtp: SmtpServer,
    loaded: Loaded,
    kafka_sasl_ssl: SaslSsl,
    monkeypatch: pytest.MonkeyPatch,
    log_entries: list[Any],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Topics created, a record consumed and its outcome published over SCRAM-SHA-512 and TLS;
    the password is in no log line, librdkafka's included."""
    sasl = kafka_sasl_ssl
    monkeypatch.setenv("HERALD_KAFKA__CONFIG", json.dumps(sasl.config()))
    monkeypatch.setenv("HERALD_KAFKA__SECRET_CONFIG", json.dumps({"sasl.password": sasl.password}))
    caplog.set_level(logging.DEBUG)
    settings = make_settings(kafka={"bootstrap_servers": sasl.bootstrap})
    assert "SASL_SSL" == settings.kafka.config["security.protocol"]
    assert sasl.password == settings.kafka.secret_config["sasl.password"].get_secret_value()
    assert sasl.password not in repr(settings)
    create_topics(settings)
    plain = _plaintext(settings, sasl)
    record = example_record(loaded, "user.signed_up")
    value = _single_object("herald.events.UserSignedUp", record)
    produce(plain, [("user.signed_up", b"k", value)])

    async with running(settings):
        await wait_for(lambda: len(smtp.received) >= 1, what="the mail")
        (message,) = await read_topic(plain, "notification.outcomes", 1)

    outcome = _outcome(message.value())
    assert ("SENT", record["event_id"]) == (outcome["status"], outcome["event_id"])
    logged = [str(e) for e in log_entries] + [r.getMessage() for r in caplog.records]
    logged.append("".join(capfd.readouterr()))
    assert "herald started" in str(log_entries)
    assert [] == [line for line in logged if sasl.password in line]


def test_a_wrong_password_fails_to_connect_and_is_never_logged(
    kafka_sasl_ssl: SaslSsl, tmp_path: Path
) -> None:
    """`herald run` with a wrong password reports the refused SASL authentication and never
    starts; nothing it prints, at DEBUG, holds the password or an address in clear."""
    wrong = f"wrong-{secrets.token_urlsafe(12)}"
    prefix = f"it-{uuid.uuid4().hex[:8]}."
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        {
            "HERALD_ROUTING_FILE": str(ROOT / "deploy" / "routing.yaml"),
            "HERALD_SCHEMAS_DIR": str(SCHEMAS),
            "HERALD_TEMPLATES_DIR": str(ROOT / "templates"),
            "HERALD_KAFKA__BOOTSTRAP_SERVERS": kafka_sasl_ssl.bootstrap,
            "HERALD_KAFKA__CONFIG": json.dumps(kafka_sasl_ssl.config()),
            "HERALD_KAFKA__SECRET_CONFIG": json.dumps({"sasl.password": wrong}),
            "HERALD_KAFKA__TOPIC_PREFIX": prefix,
            "HERALD_KAFKA__GROUP_ID": f"{prefix}herald",
            "HERALD_HTTP__PORT": "0",
            "HERALD_PUBLIC__PORT": "0",
            "HERALD_IDEMPOTENCY__PATH": str(tmp_path / "idempotency.sqlite3"),
            "HERALD_LOG__LEVEL": "DEBUG",
            **SECRETS_ENV,
            "HERALD_POLICY__STATE_PATH": str(tmp_path / "policy.sqlite3"),
        }
    )
    lines: list[str] = []
    refused = "SASL authentication error: Authentication failed"
    with subprocess.Popen(
        [sys.executable, "-m", "service", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as proc:
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        try:
            while not any(refused in line for line in lines):
                assert proc.poll() is None, f"herald exited early: {''.join(lines)[-2000:]}"
                assert time.monotonic() < deadline, "no SASL authentication error within 60 s"
                time.sleep(0.05)
        finally:
            proc.kill()
            reader.join(timeout=30)
    output = "".join(lines)
    assert "herald started" not in output
    assert wrong not in output
    assert [] == clear_addresses(output)
