"""Exemplar reservoirs: the latest sampled measurement per bucket survives a
collection, so a Prometheus scrape cannot take an OTLP push's exemplars."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider

from tracing.exemplars import LatestPerBucket, NoExemplars


def test_latest_per_bucket_keeps_exemplars_across_collections() -> None:
    reservoir = LatestPerBucket(boundaries=[0.01, 0.1])
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    first = tracer.start_span("a")
    second = tracer.start_span("b")
    reservoir.offer(0.005, 1, {"route": "/x", "extra": 1}, trace.set_span_in_context(first))
    reservoir.offer(0.007, 2, {"route": "/x"}, trace.set_span_in_context(second))  # same bucket
    reservoir.offer(0.5, 3, {"route": "/x"}, trace.set_span_in_context(first))  # overflow bucket
    reservoir.offer(0.05, 4, {"route": "/x"}, Context())  # no span: nothing to point at

    for _ in range(2):  # a second collection sees the same exemplars
        exemplars = sorted(reservoir.collect({"route": "/x"}), key=lambda e: e.value)
        assert [(e.value, e.time_unix_nano) for e in exemplars] == [(0.007, 2), (0.5, 3)]
        assert exemplars[0].trace_id == second.get_span_context().trace_id
        assert exemplars[0].span_id == second.get_span_context().span_id
        assert exemplars[1].span_id == first.get_span_context().span_id
        assert all(e.filtered_attributes is None for e in exemplars)

    reservoir.offer(0.001, 5, {"route": "/x", "extra": 2}, trace.set_span_in_context(first))
    (low,) = [e for e in reservoir.collect({"route": "/x"}) if e.value == 0.001]
    assert low.filtered_attributes == {"extra": 2}  # only what the point does not carry


def test_no_exemplars_keeps_nothing() -> None:
    reservoir = NoExemplars(boundaries=[1.0])
    span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("a")
    reservoir.offer(0.5, 1, {}, trace.set_span_in_context(span))
    assert reservoir.collect({}) == []
