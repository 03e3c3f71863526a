"""The engine's batched histogram reads exactly like prometheus_client's own."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.common.metrics import LATENCY_BUCKETS, BatchedHistogram

# Values on and around the bucket bounds, where `le` (less or equal) matters.
VALUES = st.one_of(st.sampled_from(LATENCY_BUCKETS), st.floats(0, 20, allow_nan=False))


@given(st.lists(st.tuples(VALUES, st.integers(1, 50)), max_size=30))
def test_observing_a_value_n_times_at_once_exposes_what_n_observations_do(
        observations: list[tuple[float, int]]) -> None:
    theirs, ours = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("latency_seconds", "help", ["pair"], buckets=LATENCY_BUCKETS,
                          registry=theirs)
    batched = BatchedHistogram("latency_seconds", "help", ("pair",), LATENCY_BUCKETS,
                               registry=ours)
    reference.labels("BTC-USD")  # both export the series before any observation
    batched.labels("BTC-USD")
    for value, count in observations:
        for _ in range(count):
            reference.labels("BTC-USD").observe(value)
        batched.labels("BTC-USD").observe(value, count)

    def series(registry: CollectorRegistry) -> dict[str, float]:
        text = generate_latest(registry).decode()
        return {f"{s.name}{sorted(s.labels.items())}": s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    mine, expected = series(ours), series(theirs)
    assert mine.keys() == expected.keys()
    for name, value in expected.items():
        assert abs(mine[name] - value) <= 1e-9 * max(1.0, abs(value)), name
