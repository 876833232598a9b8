"""Structured logs (structlog): JSON lines by default, with no email address ever in them."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")


def mask_emails(text: str) -> str:
    """`jane.doe@example.com` → `j***@example.com` wherever an address appears in `text`."""
    return _EMAIL.sub(r"\1***@\2", text)


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return mask_emails(value)
    if isinstance(value, list | tuple):
        return type(value)(_mask(v) for v in value)
    return value


def redact_emails(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Last line of defence: any address that slipped into a log line is masked."""
    for key, value in event.items():
        event[key] = _mask(value)
    return event


KAFKA_LOGGER = logging.getLogger("herald.librdkafka")
"""Handed to every librdkafka client (`logger` property) so its lines come out structured too."""


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Structured logs for Herald and, through the stdlib bridge, for librdkafka and aiosmtpd."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_emails,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
