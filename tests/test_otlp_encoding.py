"""Our hand-written OTLP encoding parses to exactly the SDK encoder's message."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from tracing import otlp_encoding
from tracing.lean import tracer_for
from tracing.otlp_encoding import OtlpTraceEncoder


def _spans() -> list[ReadableSpan]:
    exporter = InMemorySpanExporter()
    finished: list[ReadableSpan] = []
    for name in ("n1", "n2"):  # two resources
        provider = TracerProvider(resource=Resource.create({"service.name": "webserver",
                                                            "service.instance.id": name}),
                                  shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("webserver", "1.2", schema_url="https://x/schema")
        other = provider.get_tracer("other")
        remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1),
                             trace_state=TraceState([("k", "v"), ("z", "1")]))
        with tracer.start_as_current_span(
                "GET /kv/{key}", context=trace.set_span_in_context(NonRecordingSpan(remote)),
                kind=SpanKind.SERVER,
                attributes={"s": "é", "i": -5, "big": 2**62, "f": 1.5, "b": False, "t": True,
                            "strs": ("a", "b"), "ints": (1, 2), "empty": ""}) as root:
            root.add_event("exception", {"exception.type": "E", "n": 0})
            root.add_event("bare")
            root.set_status(Status(StatusCode.ERROR, "boom"))
            with other.start_as_current_span("kv.get", links=[
                    Link(root.get_span_context(), {"why": "test"}), Link(remote)]) as child:
                child.set_status(Status(StatusCode.OK))
            tracer.start_span("websocket.message", kind=SpanKind.CONSUMER,
                              context=trace.set_span_in_context(NonRecordingSpan(remote))).end()
            for i in range(3):  # the pair cache must not change anything
                tracer.start_span("again", attributes={"s": "é", "n": i}).end()
    finished.extend(exporter.get_finished_spans())
    return finished


def test_encoding_matches_the_sdk_encoder() -> None:
    spans = _spans()
    encoder = OtlpTraceEncoder()
    for _ in range(2):  # second round: everything from the caches
        ours = ExportTraceServiceRequest.FromString(encoder.encode(spans))
        assert ours == encode_spans(spans)


def test_empty_batch() -> None:
    assert OtlpTraceEncoder().encode([]) == b""
    assert ExportTraceServiceRequest.FromString(b"") == encode_spans([])


def test_lean_spans_and_the_pair_cache_match_the_sdk_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our own spans hold plain dicts and lists (the encoder's fast path); a key whose
    value changes type (1, True, 1.0 are equal in Python) must not reuse a cached pair,
    and a cache that fills up starts again without changing the bytes."""
    monkeypatch.setattr(otlp_encoding, "_CACHE_LIMIT", 5)
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "webserver"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracer_for(provider, "webserver")
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"x": 1, "s": "a"}) as root:
        root.add_event("e", {"k": "v"})
        values: tuple[int | bool | float | str, ...] = (1, True, 1.0, "1", 0, False, 0.0, -1, 2**40)
        for i, value in enumerate(values):
            tracer.start_span(f"s{i}", attributes={"x": value, "n": i, "s": "a"},
                              links=[Link(root.get_span_context(), {"i": i})]).end()
        root.set_status(Status(StatusCode.ERROR, "why"))
    spans = list(exporter.get_finished_spans())
    assert all(type(s._attributes) is dict for s in spans)  # the fast path is what is tested
    encoder = OtlpTraceEncoder()
    for _ in range(3):
        assert ExportTraceServiceRequest.FromString(encoder.encode(spans)) == encode_spans(spans)


def test_equal_scopes_from_separate_tracers_are_grouped_as_the_sdk_groups_them() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "webserver"}), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # Each lean tracer makes its own scope object: equal values, two objects.
    first, second = tracer_for(provider, "webserver"), tracer_for(provider, "webserver")
    other = tracer_for(provider, "other")
    for i in range(3):
        for tracer in (first, other, second):
            tracer.start_span(f"s{i}").end()
    spans = list(exporter.get_finished_spans())
    assert spans[0].instrumentation_scope is not spans[2].instrumentation_scope
    request = ExportTraceServiceRequest.FromString(OtlpTraceEncoder().encode(spans))
    assert request == encode_spans(spans)
    assert [len(s.spans) for s in request.resource_spans[0].scope_spans] == [6, 3]
