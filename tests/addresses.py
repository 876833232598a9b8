"""Email addresses left in clear in what Herald logs: a detector, and Herald's logging set up as
`herald run` sets it up, with its output kept for the detector.

The detector is written from the RFCs, not from `service.logs`, so it checks the masking
rather than repeating it: an addr-spec is a dot-atom local part (RFC 5322 atext, and any
non-ASCII character as RFC 6531 allows), `@`, and a domain of two labels or more whose last
starts with a letter. Symbols before the local part's first letter or digit are read as
punctuation (the quote of a repr, `['ada@example.com']`). Only Herald's mask, one character
then `***` (`j***@example.com`), passes as a local part.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO, cast

import structlog

from service import logs

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\x80-\U0010ffff-]"
_LEAD = r"[!#$%&'*+/=?^`{|}~.-]*"
_LABEL = r"[A-Za-z0-9\x80-\U0010ffff-]"
_DOMAIN = rf"(?:{_LABEL}+\.)+[A-Za-z\x80-\U0010ffff]{_LABEL}*"
_ADDR_SPEC = re.compile(
    rf"(?<!{_ATEXT}){_LEAD}(?P<local>[A-Za-z0-9_\x80-\U0010ffff]{_ATEXT}*)@{_DOMAIN}"
)
_MASKED = re.compile(r".\*\*\*")


def clear_addresses(text: str) -> list[str]:
    """Every address in `text` that is not masked, in order; a line that is a JSON object is
    read first, since the JSON renderer writes `é` as `\\u00e9`."""
    found = []
    for line in text.splitlines():
        if "@" not in line:
            continue
        found += [
            m.group(0)
            for m in _ADDR_SPEC.finditer(_unescaped(line))
            if not _MASKED.fullmatch(m.group("local"))
        ]
    return found


def _unescaped(line: str) -> str:
    if line.startswith("{"):
        try:
            return json.dumps(json.loads(line), ensure_ascii=False)
        except ValueError:
            pass
    return line


class LogTap(io.TextIOBase):
    """A stream for Herald's logs: it keeps what is written until taken, and passes it on to
    standard error, where pytest shows it with a failing test. Written to from several threads
    (librdkafka's log callback, the test SMTP server)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunks: list[str] = []

    def write(self, text: str) -> int:
        with self._lock:
            self._chunks.append(text)
        sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return False

    def take(self) -> str:
        """What was written since the last take."""
        with self._lock:
            chunks, self._chunks = self._chunks, []
        return "".join(chunks)


@contextmanager
def herald_logs(level: str = "DEBUG", fmt: str = "json") -> Iterator[LogTap]:
    """`logs.configure` as `herald run` calls it, into a `LogTap`; the previous structlog
    configuration, root handlers and level are restored afterwards."""
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, root_level = root.handlers[:], root.level
    tap = LogTap()
    logs.configure(level, fmt, cast(TextIO, tap))  # write, flush and isatty are what it uses
    ours = root.handlers[-1]
    root.handlers[:0] = handlers  # pytest's own capture stays in place
    # Other fixtures (`log_entries`) swap the configuration for a test: a logger cached on its
    # first use would keep writing here.
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield tap
    finally:
        root.removeHandler(ours)
        root.setLevel(root_level)
        structlog.configure(**saved)
