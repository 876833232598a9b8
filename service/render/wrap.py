"""Jinja's `wordwrap` filter, with the same output and without a `textwrap.TextWrapper` per
paragraph; long lines of a text part are mostly the template's own sentences, so wrapped lines
are remembered."""

from __future__ import annotations

import bisect
import re
from functools import lru_cache
from itertools import accumulate

from jinja2 import Environment, pass_environment
from jinja2.filters import do_wordwrap

_WRAP_SPACE = "\t\n\x0b\x0c\r "
"""textwrap's whitespace: the only places it breaks a line when hyphens do not count."""
_WRAP_CHUNK = re.compile(r"[\t\n\x0b\x0c\r ]+|[^\t\n\x0b\x0c\r ]+")
_BLANK_WORD = re.compile(r"(?:^|[\t\n\x0b\x0c\r ])[^\S\t\n\x0b\x0c\r ]+(?:[\t\n\x0b\x0c\r ]|$)")
"""A word of other whitespace only (NBSP…), which textwrap drops at line ends like a space."""


@pass_environment
def wordwrap(
    environment: Environment,
    s: str,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    """Jinja's `wordwrap`, same output, without a `textwrap.TextWrapper` per paragraph, which
    costs more than the wrapping. Breaking on hyphens is left to Jinja."""
    if break_on_hyphens:
        return do_wordwrap(environment, s, width, break_long_words, wrapstring, break_on_hyphens)
    sep = environment.newline_sequence if wrapstring is None else wrapstring
    return sep.join([sep.join(_wrap(line, width, break_long_words)) for line in s.splitlines()])


@lru_cache(maxsize=4096)
def _wrap(line: str, width: int, break_long_words: bool) -> tuple[str, ...]:
    """`textwrap.wrap(line, width, break_long_words=…, break_on_hyphens=False,
    expand_tabs=False, replace_whitespace=False)`, remembered: most long lines of a text
    part are the template's own sentences, the same in every mail (9% of render time)."""
    return tuple(_wrap_lines(line, width, break_long_words))


def _wrap_lines(line: str, width: int, break_long_words: bool) -> list[str]:
    if width <= 0:
        raise ValueError(f"invalid width {width!r} (must be > 0)")
    if len(line) <= width and not line[-1:].isspace():  # the common case: one line, as is
        return [line] if line else []
    if break_long_words or _BLANK_WORD.search(line):
        return _wrap_chunks(line, width, break_long_words)
    # textwrap fills a line with whole chunks (words, runs of whitespace) while they fit: the
    # line ends at the last chunk end within `width`, found by bisection instead of a loop.
    ends = list(accumulate(map(len, _WRAP_CHUNK.findall(line))))
    lines: list[str] = []
    pos = 0
    while pos < len(line):
        if lines and line[pos] in _WRAP_SPACE:  # no line starts with whitespace but the first
            pos = ends[bisect.bisect_right(ends, pos)]
            if pos == len(line):
                break
        k = bisect.bisect_right(ends, pos + width) - 1
        # A chunk longer than a line is left whole, on a line of its own.
        end = ends[k] if k >= 0 and ends[k] > pos else ends[bisect.bisect_right(ends, pos)]
        if text := line[pos:end].rstrip(_WRAP_SPACE):
            lines.append(text)
        pos = end
    return lines


def _wrap_chunks(line: str, width: int, break_long_words: bool) -> list[str]:
    """textwrap's own loop (CPython 3.11 `TextWrapper._wrap_chunks`), step for step."""
    chunks = _WRAP_CHUNK.findall(line)
    chunks.reverse()
    lines: list[str] = []
    while chunks:
        cur: list[str] = []
        size = 0
        if lines and not chunks[-1].strip():
            chunks.pop()
        while chunks and size + len(chunks[-1]) <= width:
            size += len(chunks[-1])
            cur.append(chunks.pop())
        if chunks and len(chunks[-1]) > width:  # a word longer than a line
            if break_long_words:
                cur.append(chunks[-1][: width - size])
                chunks[-1] = chunks[-1][width - size :]
            elif not cur:
                cur.append(chunks.pop())
        if cur and not cur[-1].strip():
            cur.pop()
        if cur:
            lines.append("".join(cur))
    return lines
