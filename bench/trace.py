"""The `trace` scenario: the CPU the W3C trace context costs per record, against render+compose
of one mail measured in the same process, as the other rows are read against the same run's
references (absolute times move with the machine; the ratio much less).

What a record pays: the header scan (every record, traced or not); for a traced one, the parse,
two more fields bound into the log context, and three more outcome fields encoded. Each is
timed as the difference between a traced and an untraced record, in thread CPU time, best of
several repeats.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from bench.workers import _prerender
from service.metrics import Metrics
from service.outcomes.records import Outcome, OutcomeCodec
from service.outcomes.status import Status
from service.outcomes.trace import traced

PARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
OTHER = (("content-type", b"application/avro"), ("producer", b"orders-api"))
"""A producer's other headers, which the scan reads past."""
UNTRACED = OTHER
TRACED = (*OTHER, ("traceparent", PARENT), ("tracestate", STATE))


def _cpu_per_call(op: Callable[[], object], calls: int, repeats: int = 7) -> float:
    """Thread CPU seconds per call of `op`, the best of `repeats` runs of `calls` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(calls):
            op()
        best = min(best, (time.thread_time() - t0) / calls)
    return best


def _outcome(trace: bool) -> Outcome:
    at = datetime(2026, 12, 5, tzinfo=UTC)
    return Outcome(
        outcome_id="0123456789abcdef0123456789abcdef",
        event_id="e-1",
        event_type="order.confirmed",
        source_topic="order.confirmed",
        source_partition=1,
        source_offset=42,
        notification_type="order.receipt",
        template="order/receipt",
        category="transactional",
        locale="en",
        recipient="j***@example.com",
        status=Status.SENT,
        attempt=1,
        smtp_code=250,
        smtp_enhanced_code="2.0.0",
        smtp_text="Ok: queued",
        message_id="<0123456789abcdef0123456789abcdef@example.com>",
        occurred_at=at,
        processed_at=at,
        sent_at=at,
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736" if trace else None,
        parent_span_id="00f067aa0ba902b7" if trace else None,
        trace_state=STATE.decode() if trace else None,
    )


def measure(loaded: Any, types: list[str], calls: int = 20_000) -> dict[str, float]:
    """Microseconds per record of each part, and the totals as shares of render+compose."""
    _, render_s = _prerender(loaded, types, 200)
    render_s = min(render_s, _prerender(loaded, types, 200)[1])  # warm caches, then the best
    metrics = Metrics()
    context = traced(TRACED, metrics)
    assert context is not None
    fields = context.log_fields()

    def bind(extra: dict[str, str]) -> Callable[[], None]:
        def op() -> None:
            with structlog.contextvars.bound_contextvars(topic="t", partition=1, offset=2, **extra):
                pass

        return op

    codec = OutcomeCodec(results_topic="r", schema=OutcomeCodec.outcome_schema(loaded.store))
    with_trace, without = _outcome(True), _outcome(False)
    us = {
        "scan_untraced_us": _cpu_per_call(lambda: traced(UNTRACED, metrics), calls) * 1e6,
        "parse_traced_us": _cpu_per_call(lambda: traced(TRACED, metrics), calls) * 1e6,
        "bind_extra_us": (_cpu_per_call(bind(fields), calls) - _cpu_per_call(bind({}), calls))
        * 1e6,
        "encode_extra_us": (
            _cpu_per_call(lambda: codec.encode(with_trace), calls)
            - _cpu_per_call(lambda: codec.encode(without), calls)
        )
        * 1e6,
    }
    traced_us = (
        us["parse_traced_us"] + max(0.0, us["bind_extra_us"]) + max(0.0, us["encode_extra_us"])
    )
    render_us = render_s * 1e6
    return {
        **us,
        "render_compose_us": render_us,
        "traced_record_us": traced_us,
        "traced_share": traced_us / render_us,
        "untraced_share": us["scan_untraced_us"] / render_us,
    }


def _extra(us: float) -> str:
    """A difference of two timings; one below zero is noise around nothing."""
    return f"+{us:.1f}" if us > 0 else "+0 (within noise)"


def summary(r: dict[str, float]) -> str:
    """One line for the report."""
    return (
        f"trace context: {r['traced_record_us']:.1f} µs CPU per traced record (parse "
        f"{r['parse_traced_us']:.1f}, log context {_extra(r['bind_extra_us'])}, outcome fields "
        f"{_extra(r['encode_extra_us'])}) = {r['traced_share']:.2%} of render+compose "
        f"({r['render_compose_us']:.0f} µs/mail, same process); an untraced record's header "
        f"scan {r['scan_untraced_us']:.2f} µs = {r['untraced_share']:.3%}"
    )
