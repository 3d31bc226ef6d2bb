"""W3C trace context and baggage across cluster messages.

Propagators are our own instances (not the global textmap), so a host
application's propagator settings cannot change what travels between nodes.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


def inject(context: otel_context.Context | None = None) -> dict[str, str]:
    """traceparent / tracestate / baggage of the current (or given) context."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract(carrier: dict[str, str]) -> otel_context.Context:
    """A context whose parent is the remote span in carrier (empty carrier: no parent)."""
    return _PROPAGATOR.extract(carrier, context=otel_context.Context())


def attach(carrier: dict[str, str]) -> object:
    return otel_context.attach(extract(carrier))


def detach(token: object) -> None:
    otel_context.detach(token)  # type: ignore[arg-type]
