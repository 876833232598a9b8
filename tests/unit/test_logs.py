"""Logs: addresses that reach a log line anyway are masked, tracebacks and nested values
included, in Herald's own lines and in those of the stdlib bridge (librdkafka, aiosmtpd)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import structlog

from service.logs import redact_emails
from tests.addresses import clear_addresses, herald_logs


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def _fail(message: str) -> None:
    raise ValueError(message)


def test_addresses_are_masked_in_every_field() -> None:
    """Strings, and strings in lists, are masked; other values are left as they are."""
    event = {
        "event": "failed for jane.doe@example.com",
        "detail": ["to bob@mail.example.org", 3],
        "count": 2,
    }
    out = redact_emails(None, "info", event)
    assert "failed for j***@example.com" == out["event"]
    assert ["to b***@mail.example.org", 3] == out["detail"]
    assert 2 == out["count"]


def test_nested_values_are_masked() -> None:
    """Dicts (keys too), lists, tuples and sets at any depth; other objects as their repr."""
    deep: list[Any] = ["deep@example.com"]
    for _ in range(20):
        deep = [deep]
    cycle: list[Any] = ["loop@example.com"]
    cycle.append(cycle)
    event = {
        "event": "x",
        "context": {
            "to": ("ada@example.com", {"cc": ["bob@example.org"]}),
            "jane@example.net": 1,
            "seen": {"eve@example.com"},
            "frozen": frozenset({"mallory@example.com"}),
        },
        "error": ValueError("no mailbox carol@example.com"),
        "deep": deep,
        "cycle": cycle,
        "flag": True,
        "ratio": 0.5,
        "none": None,
    }
    out = redact_emails(None, "info", event)
    assert {
        "to": ("a***@example.com", {"cc": ["b***@example.org"]}),
        "j***@example.net": 1,
        "seen": {"e***@example.com"},
        "frozen": {"m***@example.com"},
    } == out["context"]
    assert "ValueError('no mailbox c***@example.com')" == out["error"]
    assert (True, 0.5, None) == (out["flag"], out["ratio"], out["none"])
    assert [] == clear_addresses(repr(out))


def test_a_traceback_is_masked_in_the_json_output() -> None:
    """An address in an exception's message is masked in the rendered `exception` text."""
    with herald_logs("INFO", "json") as tap:
        try:
            _fail("mailbox unavailable: jane.doe@example.com")
        except ValueError:
            structlog.get_logger("test").exception("send failed", to="jane.doe@example.com")
    (line,) = _lines(tap.take())
    assert "j***@example.com" == line["to"]
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert line["exception"].endswith("ValueError: mailbox unavailable: j***@example.com")
    assert "jane.doe" not in json.dumps(line)


def test_the_stdlib_bridge_masks_messages_and_tracebacks() -> None:
    """Lines of librdkafka and aiosmtpd (stdlib logging) are masked like Herald's own, their
    tracebacks included."""
    with herald_logs("INFO", "json") as tap:
        logging.getLogger("mail.log").info("%r recip: %s", ("127.0.0.1", 4242), "ada@example.com")
        try:
            _fail("RCPT refused for bob@example.org")
        except ValueError:
            logging.getLogger("herald.librdkafka").exception("callback failed")
    recip, failed = _lines(tap.take())
    assert ("mail.log", "info") == (recip["logger"], recip["level"])
    assert "('127.0.0.1', 4242) recip: a***@example.com" == recip["event"]
    assert ("herald.librdkafka", "error") == (failed["logger"], failed["level"])
    assert failed["exception"].endswith("ValueError: RCPT refused for b***@example.org")


def test_the_console_format_masks_tracebacks_too() -> None:
    """`HERALD_LOG__FORMAT=console` renders the same masked text."""
    with herald_logs("INFO", "console") as tap:
        try:
            _fail("no such user ada@example.com")
        except ValueError:
            structlog.get_logger("test").exception("send failed")
    out = tap.take()
    assert "ValueError: no such user a***@example.com" in out
    assert [] == clear_addresses(out)


@pytest.mark.parametrize(
    "text",
    [
        "to jane.doe@example.com",
        "o'brien+tag@mail.example.co.uk,",
        '{"event": "to j\\u00f6rg@example.de"}',
        "jörg@exämple.de",
        "ab***@example.com",
    ],
)
def test_the_detector_finds_a_clear_address(text: str) -> None:
    """The integration suite's check can fail: a clear address is reported."""
    assert 1 == len(clear_addresses(text))


@pytest.mark.parametrize(
    "text",
    [
        "to j***@example.com",
        '{"event": "to \\u00e9***@example.com"}',
        "version pkg@1.2.3, user@localhost, @example.com",
    ],
)
def test_the_detector_passes_masks_and_non_addresses(text: str) -> None:
    """Herald's mask, and what is no addr-spec with a domain, are not reported."""
    assert [] == clear_addresses(text)


def test_what_herald_logs_passes_the_detector_and_a_bypass_does_not() -> None:
    """Through Herald's processors an address comes out masked; written past them, the
    detector catches it."""
    with herald_logs("DEBUG", "json") as tap:
        structlog.get_logger("test").info("sent", to="ada@example.com")
        logging.getLogger("mail.log").info("sender: %s", "no-reply@example.com")
    assert [] == clear_addresses(tap.take())
    tap.write("sent to ada@example.com\n")
    assert ["ada@example.com"] == clear_addresses(tap.take())
