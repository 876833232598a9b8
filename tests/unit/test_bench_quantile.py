"""The benchmark's reading of Herald's histograms: quantiles as Prometheus estimates them."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Histogram

from bench.run import bucket_quantile


def _buckets(registry: CollectorRegistry) -> dict[float, float]:
    (family,) = registry.collect()
    return {
        math.inf if s.labels["le"] == "+Inf" else float(s.labels["le"]): s.value
        for s in family.samples
        if s.name.endswith("_bucket")
    }


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.5, 0.1), (0.75, 0.15), (0.9, 0.18), (1.0, 0.2)],
)
def test_interpolates_within_the_bucket_holding_the_rank(q: float, expected: float) -> None:
    r = CollectorRegistry()
    h = Histogram("x_seconds", "x", buckets=(0.1, 0.2), registry=r)
    for v in [0.05] * 50 + [0.15] * 50:
        h.observe(v)
    assert expected == pytest.approx(bucket_quantile(_buckets(r), q))


def test_a_rank_past_the_last_bound_reads_as_that_bound_and_none_without_samples() -> None:
    r = CollectorRegistry()
    h = Histogram("x_seconds", "x", buckets=(0.1, 0.2), registry=r)
    assert bucket_quantile(_buckets(r), 0.99) is None
    for v in [0.05] * 10 + [7.0] * 90:
        h.observe(v)
    assert 0.2 == bucket_quantile(_buckets(r), 0.99)
    assert bucket_quantile({}, 0.5) is None
