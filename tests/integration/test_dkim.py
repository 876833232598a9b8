"""DKIM end to end on the real broker and SMTP server: every mail Herald sends, signed on the
event loop or in the render workers, with an RSA or an Ed25519 key, arrives with a signature
that dkimpy verifies against the key's TXT record, the one-click pair of optional mail covered."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.delivery.dkim import signer
from service.events.schemas import encode_single_object
from service.loading import Loaded
from service.outcomes.records import decode_outcome
from service.testing import SmtpServer, dkim_ed25519_key, dkim_key
from tests.conftest import example_record
from tests.dkimpy import verify
from tests.integration.conftest import create_topics, produce, read_topic, running, wait_for

EVENTS = ["order.confirmed", "report.ready", "password.reset_requested"]
"""A French receipt with 8bit parts, an optional report (List-Unsubscribe), a security mail."""


@pytest.mark.parametrize(
    ("render_workers", "algorithm"), [(0, "rsa-sha256"), (1, "rsa-sha256"), (1, "ed25519-sha256")]
)
async def test_every_mail_sent_is_signed_and_verifies(
    make_settings: Any,
    smtp: SmtpServer,
    loaded: Loaded,
    tmp_path: Path,
    render_workers: int,
    algorithm: str,
) -> None:
    """Each mail the SMTP server receives verifies against the key's TXT record and fails with
    its Subject changed; the optional one's h= covers List-Unsubscribe-Post."""
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(dkim_key() if algorithm == "rsa-sha256" else dkim_ed25519_key())
    settings = make_settings(
        dkim={"domain": "example.com", "selector": "herald1", "key_file": key_file},
        processing={"render_workers": render_workers},
    )
    made = signer(settings.dkim, settings.mail)
    assert made is not None
    create_topics(settings)
    batch = []
    for event_type in EVENTS:
        record = example_record(loaded, event_type)
        schema = loaded.store.reader(loaded.table.events[event_type].schema_)
        assert schema is not None
        batch.append(
            (event_type, record["event_id"].encode(), encode_single_object(schema, record))
        )
    produce(settings, batch)

    async with running(settings):
        outcomes = [
            decode_outcome(m.value(), loaded.store)
            for m in await read_topic(settings, "notification.outcomes", len(EVENTS))
        ]
        await wait_for(lambda: len(smtp.received) >= len(EVENTS), what="the mails")

    assert ["SENT"] * len(EVENTS) == [o["status"] for o in outcomes]
    signed_headers = []
    for received in smtp.received:
        assert received.data.startswith(b"DKIM-Signature: ")
        assert True is verify(received.data, made)
        assert f"a={algorithm};".encode() in received.data
        tampered = received.data.replace(b"\r\nSubject: ", b"\r\nSubject: Re: ", 1)
        assert False is verify(tampered, made)
        h = re.search(rb"\bh=([^;]+);", received.data)
        assert h is not None
        signed_headers.append(re.sub(rb"\s+", b"", h.group(1)).decode().split(":"))
    assert 1 == sum("list-unsubscribe-post" in h for h in signed_headers)
    assert all(h[0] == "from" for h in signed_headers)
