"""A lean tracer: the SDK's spans without their per-span machinery.

An SDK span costs about 20 µs to start and end here, plus about 1.3 µs per
attribute and 7 µs per `set_attribute` (a lock, validation, a bounded mapping):
with its export, tracing took a quarter of the HTTP throughput. Our spans carry
a handful of attributes we produce ourselves, in one Trio thread, so this
tracer records them in plain fields of a span that is itself a `ReadableSpan`
(as the SDK's Span is) and hands it to the provider's processors at `end()`.
Sampling, id generation, resource and processors are the provider's own;
exporters see no difference.

What it leaves out, on purpose: attribute validation and limits (callers pass
str/int/float/bool values and clip client-supplied strings, see spans.clip),
locks (a span belongs to one Trio task), and span limits on events and links.

Each span's start and end run on the event loop's thread for every request, so
the path is kept short: the provider's processors are called directly (only
those that do something at start), ids come straight from `random` when the
provider uses the SDK's random generator, and the span context is built
without re-validating ids that are valid by construction.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from random import getrandbits
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.util.types import Attributes, AttributeValue

from tracing.sampling import fast_sampler
from tracing.sdk_compat import active_span_processor, span_processors

_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_NO_TRACE_STATE = TraceState()
_OnStart = Callable[..., None]
_OnEnd = Callable[[ReadableSpan], None]


def _random_id(bits: int) -> int:
    """What RandomIdGenerator returns, without its two calls."""
    value = getrandbits(bits)
    while not value:
        value = getrandbits(bits)
    return value


def tracer_for(provider: trace.TracerProvider, name: str) -> trace.Tracer:
    """The lean tracer for an SDK provider; any other provider's own tracer."""
    if isinstance(provider, SdkTracerProvider):
        return LeanTracer(provider, name)
    return provider.get_tracer(name)


class LeanTracer(trace.Tracer):
    def __init__(self, provider: SdkTracerProvider, name: str) -> None:
        # The SDK's own Tracer is built from these same parts of its provider.
        self.processor: SpanProcessor = active_span_processor(provider)
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.fast = fast_sampler(self.sampler)
        self.ids = provider.id_generator
        self.random_ids = type(self.ids) is RandomIdGenerator
        self.scope = InstrumentationScope(name)
        self._seen: object = None
        self._on_start: tuple[_OnStart, ...] = ()
        self._on_end: tuple[_OnEnd, ...] = ()

    def _dispatch(self) -> tuple[tuple[_OnStart, ...], tuple[_OnEnd, ...]]:
        """The processors' on_start (those that override it) and on_end, re-read
        whenever the provider's tuple of processors has been replaced (one is added)."""
        processors = span_processors(self.processor)
        if processors is None:  # not the SDK's multi-processor: call it as it is
            return (self.processor.on_start,), (self.processor.on_end,)
        if processors is not self._seen:
            self._on_start = tuple(p.on_start for p in processors
                                   if type(p).on_start is not SpanProcessor.on_start)
            self._on_end = tuple(p.on_end for p in processors)
            self._seen = processors
        return self._on_start, self._on_end

    def start_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
        links: Sequence[Link] | None = None, start_time: int | None = None,
        record_exception: bool = True, set_status_on_exception: bool = True,
    ) -> trace.Span:
        current = trace.get_current_span(context).get_span_context()
        parent = current if current.is_valid else None
        random_ids = self.random_ids
        trace_id = (parent.trace_id if parent is not None
                    else _random_id(128) if random_ids else self.ids.generate_trace_id())
        attrs = dict(attributes) if attributes else {}
        fast = self.fast
        if fast is not None:
            # The SDK's default sampler or ours: its decision alone, without building a result.
            sampled = recording = fast.sampled(parent, trace_id, name, attributes)
            trace_state = parent.trace_state if parent is not None else None
        else:
            decision = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled = decision.decision is Decision.RECORD_AND_SAMPLE
            recording = decision.decision is not Decision.DROP
            trace_state = decision.trace_state
            if decision.attributes:
                attrs.update(decision.attributes)
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        if random_ids:
            # Both ids are valid by construction: the tuple SpanContext() would build.
            span_context = tuple.__new__(SpanContext, (trace_id, _random_id(64), False, flags,
                                                       trace_state or _NO_TRACE_STATE, True))
        else:
            span_context = SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False,
                                       trace_flags=flags, trace_state=trace_state)
        if not recording:
            return trace.NonRecordingSpan(span_context)
        on_start, on_end = self._dispatch()
        span = LeanSpan(self, name, span_context, parent, kind, attrs, list(links or ()),
                        start_time if start_time is not None else time.time_ns(), on_end)
        for call in on_start:
            call(span, parent_context=context)
        return span

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL, attributes: Attributes = None,
        links: Sequence[Link] | None = None, start_time: int | None = None,
        record_exception: bool = True, set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time)
        with trace.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                            set_status_on_exception=set_status_on_exception) as current:
            yield current


class LeanSpan(trace.Span, ReadableSpan):
    """A span that is its own ReadableSpan, as the SDK's Span is."""

    def __init__(self, tracer: LeanTracer, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], links: list[Link], start: int,
                 on_end: tuple[_OnEnd, ...]) -> None:
        # ReadableSpan.__init__'s fields, set here without its keyword call.
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = None
        self._instrumentation_scope = tracer.scope
        self._parent = parent
        self._start_time = start
        self._end_time: int | None = None
        self._attributes = attributes
        self._events: list[Event] = []
        self._links = links
        self._resource = tracer.resource
        self._status = _UNSET
        self._on_end = on_end

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            self._attributes.update(attributes)  # type: ignore[union-attr]

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None:
            self._attributes[key] = value  # type: ignore[index]

    def add_event(self, name: str, attributes: Attributes = None, timestamp: int | None = None) -> None:
        if self._end_time is None:
            self._events.append(Event(name, attributes, timestamp))  # type: ignore[attr-defined]

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links.append(Link(context, attributes))  # type: ignore[attr-defined]

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: OK is final, and UNSET never replaces anything.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        new = status if isinstance(status, Status) else Status(status, description)
        if new.status_code is not StatusCode.UNSET:
            self._status = new

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        event_attributes: dict[str, Any] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event_attributes.update(attributes)
        self.add_event("exception", event_attributes, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        for call in self._on_end:
            call(self)
