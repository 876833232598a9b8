"""Structured logs (structlog): JSON lines by default, with no email address ever in them."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\x80-\U0010ffff-]"
"""A local part's characters: RFC 5322 atext, dots, and any non-ASCII one (RFC 6531)."""
_LEAD = r"[!#$%&'*+/=?^`{|}~.-]*"
"""Symbols before a local part's first letter or digit, read as punctuation around it:
quotes and braces of a repr (`{'ada@example.com'}`) stay outside the mask."""
_LABEL = r"[\w\x80-\U0010ffff-]"
_EMAIL = re.compile(
    rf"(?<!{_ATEXT})({_LEAD}[\w\x80-\U0010ffff]){_ATEXT}*"
    rf"@((?:{_LABEL}+\.)+[A-Za-z\x80-\U0010ffff]{_LABEL}*)"
)
"""The lookbehind starts a match only where a run of atext starts, which keeps the search
linear on a long token."""
_MAX_DEPTH = 8
"""Deeper values are masked as their repr (which also ends any cycle)."""


def mask_emails(text: str) -> str:
    """`jane.doe@example.com` → `j***@example.com` wherever an address appears in `text`."""
    return _EMAIL.sub(r"\1***@\2", text) if "@" in text else text


def _mask(value: Any, depth: int = 0) -> Any:
    """`value` with every address masked, walking dicts, lists, tuples and sets; any other
    object becomes its masked repr, which is what the renderers would have shown."""
    if isinstance(value, str):
        return mask_emails(value)
    if value is None or isinstance(value, int | float):
        return value
    if depth >= _MAX_DEPTH:
        return mask_emails(repr(value))
    depth += 1
    if isinstance(value, dict):
        return {
            (mask_emails(k) if isinstance(k, str) else k): _mask(v, depth) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v, depth) for v in value]
    if isinstance(value, tuple):
        return tuple(_mask(v, depth) for v in value)
    if isinstance(value, set | frozenset):
        return {_mask(v, depth) for v in value}
    return mask_emails(repr(value))


def redact_emails(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: any address that slipped into a log line is masked, tracebacks
    included, so it runs after `format_exc_info`, just before the renderer."""
    for key, value in event.items():
        event[key] = _mask(value)
    return event


KAFKA_LOGGER = logging.getLogger("herald.librdkafka")
"""Handed to every librdkafka client (`logger` property) so its lines come out structured too."""


def configure(level: str = "INFO", fmt: str = "json", stream: TextIO | None = None) -> None:
    """Structured logs for Herald and, through the stdlib bridge, for librdkafka and aiosmtpd,
    to `stream` (standard error by default)."""
    out = stream or sys.stderr
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    # The traceback is text only after format_exc_info: redaction must come after it.
    last: list[Any] = [structlog.processors.format_exc_info, redact_emails, renderer]
    structlog.configure(
        processors=[*shared, *last],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
