"""Outcomes: what Herald reports for every record, and what it does next.

In: decisions of the policy stage and errors of the stages. Out: `Outcome` records for the
results topic, dead-letter copies, retry tickets, and redrive of dead letters. The decision
table (`decisions.py`) maps an error, stage and attempt to a status, a reason and a next step;
the `herald.*` headers are written and read in `headers.py` only, the W3C trace context
(`traceparent`, `tracestate`) in `trace.py`. It never imports policy, render, delivery or the
flow.
"""
