"""The lean tracer hands the SDK's processors the spans the SDK would, and obeys the
provider's sampler."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from tracing.lean import LeanSpan, tracer_for


def _setup(**kwargs: object) -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}), shutdown_on_exit=False,
                              **kwargs)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_for(provider, "webserver"), exporter


def test_spans_parents_links_events_and_status() -> None:
    tracer, exporter = _setup()
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes={"a": 1}) as root:
        assert isinstance(root, LeanSpan)
        root.set_attribute("b", "x")
        root.update_name("renamed")
        child = tracer.start_span("child", links=[trace.Link(root.get_span_context(), {"l": True})])
        child.add_event("e", {"k": "v"})
        child.set_status(StatusCode.OK)
        child.set_status(StatusCode.ERROR)  # OK is final, as in the SDK
        child.end()
        child.set_attribute("late", 1)  # ignored after end
    try:
        with tracer.start_as_current_span("boom"):
            raise ValueError("bad")
    except ValueError:
        pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"renamed", "child", "boom"}
    root_s, child_s, boom = spans["renamed"], spans["child"], spans["boom"]
    assert root_s.kind is SpanKind.SERVER and root_s.parent is None
    assert dict(root_s.attributes or {}) == {"a": 1, "b": "x"}
    assert child_s.parent is not None and child_s.parent.span_id == root_s.context.span_id
    assert child_s.context.trace_id == root_s.context.trace_id
    assert [e.name for e in child_s.events] == ["e"] and child_s.status.status_code is StatusCode.OK
    assert child_s.links[0].context.span_id == root_s.context.span_id
    assert "late" not in (child_s.attributes or {})
    assert boom.status.status_code is StatusCode.ERROR
    event = boom.events[0]
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert "raise ValueError" in str(event.attributes["exception.stacktrace"])
    assert root_s.resource.attributes["service.name"] == "t"
    assert root_s.instrumentation_scope is not None and root_s.instrumentation_scope.name == "webserver"


@pytest.mark.parametrize("sampled", [True, False])
def test_default_sampler_follows_a_remote_parent(sampled: bool) -> None:
    tracer, exporter = _setup()
    parent = SpanContext(0xA, 0xB, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT))
    span = tracer.start_span("s", context=trace.set_span_in_context(NonRecordingSpan(parent)))
    span.end()
    assert span.get_span_context().trace_id == 0xA
    assert span.is_recording() is False  # ended, or never recording
    assert len(exporter.get_finished_spans()) == (1 if sampled else 0)


def test_other_samplers_decide() -> None:
    tracer, exporter = _setup(sampler=ParentBased(ALWAYS_OFF))
    span = tracer.start_span("dropped")
    assert isinstance(span, NonRecordingSpan) and not span.get_span_context().trace_flags.sampled
    tracer, exporter = _setup(sampler=TraceIdRatioBased(0.5))
    for _ in range(400):
        tracer.start_span("s").end()
    assert 120 < len(exporter.get_finished_spans()) < 280


def test_non_sdk_provider_gets_its_own_tracer() -> None:
    tracer = tracer_for(trace.NoOpTracerProvider(), "x")
    assert not tracer.start_span("s").is_recording()


class _Recorder(SpanProcessor):
    def __init__(self) -> None:
        self.started: list[tuple[str, object]] = []
        self.ended: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append(span.name)


class _Starting(_Recorder):
    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.started.append((span.name, parent_context))


def test_processors_added_later_are_called_and_starts_reach_those_that_want_them() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    tracer = tracer_for(provider, "t")
    first = _Starting()
    provider.add_span_processor(first)
    tracer.start_span("one").end()
    later = _Recorder()  # the base class's on_start: not called, not needed
    provider.add_span_processor(later)
    remote = SpanContext(5, 6, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = trace.set_span_in_context(NonRecordingSpan(remote))
    tracer.start_span("two", context=parent).end()
    assert first.started == [("one", None), ("two", parent)]
    assert first.ended == ["one", "two"] and later.ended == ["two"]


def test_span_context_is_what_the_sdk_would_build() -> None:
    tracer, _ = _setup()
    root = tracer.start_span("root")
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    for span in (root, child):
        ctx = span.get_span_context()
        rebuilt = SpanContext(ctx.trace_id, ctx.span_id, is_remote=False, trace_flags=ctx.trace_flags,
                              trace_state=ctx.trace_state)
        assert ctx == rebuilt and type(ctx) is SpanContext
        assert ctx.is_valid and not ctx.is_remote and ctx.trace_flags.sampled
        assert 0 < ctx.trace_id < 2**128 and 0 < ctx.span_id < 2**64
        assert dict(ctx.trace_state) == {}
    assert child.get_span_context().trace_id == root.get_span_context().trace_id
