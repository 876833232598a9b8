"""Logs: addresses that reach a log line anyway are masked."""

from __future__ import annotations

from service.logs import redact_emails


def test_addresses_are_masked_in_every_field() -> None:
    event = {
        "event": "failed for jane.doe@example.com",
        "detail": ["to bob@mail.example.org", 3],
        "count": 2,
    }
    out = redact_emails(None, "info", event)
    assert "failed for j***@example.com" == out["event"]
    assert ["to b***@mail.example.org", 3] == out["detail"]
    assert 2 == out["count"]
