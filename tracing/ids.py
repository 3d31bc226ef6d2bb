"""Trace and span ids as W3C text (lowercase hex), the one way they are shown to people
and put in JSON frames, logs and the trace viewer."""

from __future__ import annotations

from opentelemetry import trace


def trace_id_hex(trace_id: int) -> str:
    return f"{trace_id:032x}"


def span_id_hex(span_id: int) -> str:
    return f"{span_id:016x}"


def current_trace_id() -> str | None:
    """The current span's trace id, or None outside a (valid) span."""
    ctx = trace.get_current_span().get_span_context()
    return trace_id_hex(ctx.trace_id) if ctx.is_valid else None
