"""W3C Trace Context (level 1) read from a consumed record's `traceparent` and `tracestate`
headers, so a mail can be followed from the request upstream that caused its event.

Herald passes the context through unchanged (W3C Trace Context §3.4, "Mutating the
traceparent field": a participant that does not change `traceparent` must not change
`tracestate` either): it exports no spans, so a parent-id of its own would name a span no
tracing backend holds. A header that does not read is ignored, never an error: the mail goes
out without a trace, and `herald_trace_context_invalid_total{header}` counts it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from service.metrics import Metrics

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
MAX_TRACEPARENT_BYTES = 512
"""Longer than any version could need; a longer value is not read at all."""
MAX_TRACESTATE_CHARS = 512
"""The combined `tracestate` a participant must be able to pass on (W3C §3.3.1.5)."""
MAX_TRACESTATE_MEMBERS = 32
"""W3C §3.3.1.1: a list of more members is invalid."""

_OWS = " \t"
_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""Version, trace-id, parent-id, trace-flags: the first 55 characters of any version."""
_KEY_CHARS = r"[a-z0-9_\-*/]"
_MEMBER = re.compile(
    rf"([a-z]{_KEY_CHARS}{{0,255}}|[a-z0-9]{_KEY_CHARS}{{0,240}}@[a-z]{_KEY_CHARS}{{0,13}})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
"""A list member, W3C §3.3.1.3: simple or multi-tenant key, `=`, a value of printable ASCII
without `,` or `=` that does not end in a space."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceContext:
    """The upstream trace a record belongs to, as its producer's headers gave it."""

    version: str
    """Two lowercase hex digits; `00` is the only version this level defines."""
    trace_id: str
    """32 lowercase hex digits, not all zero: the whole trace."""
    parent_id: str
    """16 lowercase hex digits, not all zero: the upstream span that wrote the record."""
    flags: int
    """trace-flags; bit 0 says the upstream sampled (recorded) the trace."""
    state: str | None = None
    """`tracestate` as received (several headers joined by `,`), valid, or None."""

    @property
    def traceparent(self) -> str:
        """The header's version-00 fields, as a participant at this level writes them."""
        return f"{self.version}-{self.trace_id}-{self.parent_id}-{self.flags:02x}"

    def log_fields(self) -> dict[str, str]:
        """What every log line of the record carries: the active span is the upstream's."""
        return {"trace_id": self.trace_id, "span_id": self.parent_id}


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceRead:
    """What a record's headers held: a context, or none, and which headers did not read."""

    context: TraceContext | None
    invalid: tuple[str, ...] = ()
    """`traceparent` and/or `tracestate`, for the metric."""


def parse_traceparent(value: bytes | None, state: str | None = None) -> TraceContext | None:
    """A `traceparent` value (W3C §3.2, and §4.3 for versions above 00), with `state` as its
    tracestate, or None if invalid."""
    fields = _traceparent(value)
    if fields is None:
        return None
    version, trace_id, parent_id, flags = fields
    return TraceContext(
        version=version, trace_id=trace_id, parent_id=parent_id, flags=flags, state=state
    )


def _traceparent(value: bytes | None) -> tuple[str, str, str, int] | None:
    """Version, trace-id, parent-id and flags of a valid `traceparent`."""
    if value is None or len(value) > MAX_TRACEPARENT_BYTES or not value.isascii():
        return None
    text = value.decode("ascii").strip(_OWS)
    fields = _FIELDS.fullmatch(text[:55])
    if fields is None:
        return None
    version, trace_id, parent_id, flags = fields.groups()
    if version == "ff" or (version == "00" and len(text) != 55):
        return None
    if len(text) > 55 and text[55] != "-":  # a later version adds fields after a dash
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:
        return None
    # Of a later version's flags only the sampled bit is known (§4.3).
    bits = int(flags, 16) if version == "00" else int(flags, 16) & 0x01
    return version, trace_id, parent_id, bits


def parse_tracestate(values: Iterable[bytes | None]) -> str | None:
    """The `tracestate` headers combined (RFC 9110 §5.3), checked and kept whole; "" if they
    hold no member, None if invalid: over the bounds, a malformed member, a key given twice."""
    parts: list[str] = []
    size = -1
    for value in values:
        if value is None or not value.isascii():
            return None
        size += len(value) + 1
        if size > MAX_TRACESTATE_CHARS:
            return None
        parts.append(value.decode("ascii"))
    combined = ",".join(parts).strip(_OWS)
    keys: set[str] = set()
    for item in combined.split(","):
        member = item.strip(_OWS)
        if not member:
            continue  # empty members are allowed (§3.3.1.1)
        if _MEMBER.fullmatch(member) is None:
            return None
        key = member.partition("=")[0]
        if key in keys or len(keys) == MAX_TRACESTATE_MEMBERS:
            return None
        keys.add(key)
    return combined if keys else ""


def read(headers: Iterable[tuple[str, bytes | None]]) -> TraceRead:
    """The trace context of a record's headers (names compared case-insensitively). Two
    `traceparent` headers make it invalid; `tracestate` is read only with a valid one."""
    parents: list[bytes | None] = []
    states: list[bytes | None] = []
    for name, value in headers:
        lower = name.lower()
        if lower == TRACEPARENT:
            parents.append(value)
        elif lower == TRACESTATE:
            states.append(value)
    if not parents:
        return TraceRead(context=None)
    fields = _traceparent(parents[0]) if len(parents) == 1 else None
    if fields is None:
        return TraceRead(context=None, invalid=(TRACEPARENT,))
    version, trace_id, parent_id, flags = fields
    state = parse_tracestate(states) if states else ""
    context = TraceContext(
        version=version, trace_id=trace_id, parent_id=parent_id, flags=flags, state=state or None
    )
    return TraceRead(context=context, invalid=(TRACESTATE,) if state is None else ())


def traced(headers: Iterable[tuple[str, bytes | None]], metrics: Metrics) -> TraceContext | None:
    """`read`, with each header that did not read counted."""
    found = read(headers)
    for header in found.invalid:
        metrics.trace_context_invalid.labels(header).inc()
    return found.context
