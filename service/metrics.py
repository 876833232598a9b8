"""Prometheus metrics (injected registry, fixed low-cardinality labels, no PII) and the HTTP
endpoint that serves them with /healthz and /readyz."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.errors import DeliveryError, DeliveryUnknownError, TransientDeliveryError

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_DELAY_BUCKETS: tuple[float, ...] = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25)
_DELAY_BUCKETS += (0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
"""Finer than the latency buckets below 250 ms: this is where a paced tail is decided."""


class Metrics:
    """Every metric Herald exports; tests pass a fresh registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "herald_records_consumed", "Records consumed.", ["topic"], registry=r
        )
        self.records_decoded = Counter(
            "herald_records_decoded", "Records decoded into events.", ["topic"], registry=r
        )
        self.decode_failures = Counter(
            "herald_decode_failures", "Records that could not be decoded.", ["topic"], registry=r
        )
        self.notifications = Counter(
            "herald_notifications",
            "Notifications by type and terminal status (sent, failed, suppressed, …).",
            ["notification", "status"],
            registry=r,
        )
        self.smtp_attempts = Counter(
            "herald_smtp_attempts",
            "SMTP send attempts by result (accepted, transient, permanent, unknown) and reply "
            "class (2xx, 4xx, 5xx, none when no reply came).",
            ["result", "reply_class"],
            registry=r,
        )
        self.dead_letters = Counter(
            "herald_dead_letters", "Records sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.internal_errors = Counter(
            "herald_internal_errors",
            "Unforeseen exceptions while handling a record, by stage: a bug, or a dependency "
            "failing in a way Herald does not know. Tried again a few times, then dead-lettered.",
            ["stage"],
            registry=r,
        )
        self.breaker_open = Gauge(
            "herald_smtp_breaker_open", "1 while the SMTP circuit breaker is open.", registry=r
        )
        self.policy_decisions = Counter(
            "herald_policy_decisions",
            "Answers of the policy stage: go or never, the reason, the category.",
            ["decision", "reason", "category"],
            registry=r,
        )
        self.policy_table_rows = Gauge(
            "herald_policy_table_rows",
            "Rows of the local preference and suppression tables.",
            ["table"],
            registry=r,
        )
        self.policy_table_lag = Gauge(
            "herald_policy_table_lag",
            "Records of a table's topic not applied to the local table yet.",
            ["table"],
            registry=r,
        )
        self.policy_table_restore_seconds = Gauge(
            "herald_policy_table_restore_seconds",
            "How long the start-up restore of a local table from its topic took.",
            ["table"],
            registry=r,
        )
        self.policy_table_refused = Counter(
            "herald_policy_table_refused_records",
            "Records of a table's topic that could not be read (wrong schema, bad key); skipped.",
            ["table"],
            registry=r,
        )
        self.feedback_processed = Counter(
            "herald_feedback_processed",
            "Feedback records processed, by kind (hard_bounce, soft_bounce, complaint, "
            "delivered) and whether they named a mail Herald sent (correlated: true, with a "
            "correction published; false: a foreign Message-ID, suppression only).",
            ["kind", "correlated"],
            registry=r,
        )
        self.feedback_suppressions = Counter(
            "herald_feedback_suppressions",
            "Suppressions published from feedback, by reason (hard_bounce, complaint, "
            "soft_bounces).",
            ["reason"],
            registry=r,
        )
        self.feedback_undecodable = Counter(
            "herald_feedback_undecodable",
            "Records of the feedback topic that could not be read; skipped.",
            registry=r,
        )
        self.retries_scheduled = Counter(
            "herald_retries_scheduled",
            "Notifications handed to a retry topic after transient failures.",
            ["topic"],
            registry=r,
        )
        self.trace_context_invalid = Counter(
            "herald_trace_context_invalid",
            "Records whose traceparent or tracestate header did not read (W3C Trace Context): "
            "ignored, the record handled without it.",
            ["header"],
            registry=r,
        )
        self.transactions = Counter(
            "herald_transactions",
            "Transactions of outcomes and offsets by result: committed, or aborted (outcomes "
            "could not be published; the offsets stay put and the write is tried again).",
            ["result"],
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "herald_transaction_seconds",
            "Time to write one batch of outcomes and its offsets in a transaction (committed "
            "or not). Records wait for it before they count as done.",
            ["lane"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "herald_in_flight",
            "Records being processed, per lane (express, standard, retry).",
            ["lane"],
            registry=r,
        )
        self.paused = Gauge(
            "herald_consumer_paused",
            "1 while a lane's consumption is paused: too much work in flight, or the SMTP breaker "
            "open.",
            ["lane"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "herald_consumer_lag",
            "Messages between the committed offset and the end of each partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.record_loop_seconds = Histogram(
            "herald_record_loop_seconds",
            "Event-loop time one record took, per lane: the sum of the steps of its handling, "
            "during each of which nothing else on the loop ran. Over 0.1 s, a record held up "
            "every other one (HeraldRecordHeldTheLoop).",
            ["lane"],
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.render_seconds = Histogram(
            "herald_render_seconds",
            "Time to render and compose one mail (with render workers: including the hand-over).",
            registry=r,
        )
        self.smtp_seconds = Histogram(
            "herald_smtp_seconds",
            "Time of one SMTP transaction.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.consume_delay_seconds = Histogram(
            "herald_consume_delay_seconds",
            "From a record's Kafka timestamp to Herald's event loop taking it, per lane: the "
            "part of event-to-accepted spent before the mail's own work (producer batching, "
            "broker, fetch, a paused or lagging lane, a loop too busy to ask). Retry records, "
            "which wait on purpose, are not counted.",
            ["lane"],
            buckets=_DELAY_BUCKETS,
            registry=r,
        )
        self.event_to_accepted_seconds = Histogram(
            "herald_event_to_accepted_seconds",
            "From the event's occurred_at to SMTP acceptance.",
            ["priority"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

        self.public_requests = Counter(
            "herald_public_requests",
            "Requests to the public listener by route (unsubscribe, healthz, other) and result "
            "(page, unsubscribed, bad_request, forged, expired, unknown_list, not_one_click, "
            "too_large, unavailable, ok, not_found, method_not_allowed).",
            ["route", "result"],
            registry=r,
        )

    def smtp_attempt(self, error: DeliveryError | None) -> None:
        """Count one SMTP attempt by how it ended."""
        if error is None:
            self.smtp_attempts.labels("accepted", "2xx").inc()
            return
        if isinstance(error, DeliveryUnknownError):
            result = "unknown"
        elif isinstance(error, TransientDeliveryError):
            result = "transient"
        else:
            result = "permanent"
        reply_class = f"{error.code // 100}xx" if error.code else "none"
        self.smtp_attempts.labels(result, reply_class).inc()
