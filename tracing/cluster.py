"""Spans of the mesh's peer links: `cluster.link` from handshake to close (its own
trace), and `cluster.handshake` for one that failed or was refused. The mesh only
says when a link starts and how it ended."""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from tracing import spans as S


def link_span(tracer: trace.Tracer, *, node: str, peer: str, address: str, dialer: str) -> trace.Span:
    """A link's span, a root (a link outlives every request that uses it); CLIENT on
    the dialer, SERVER on the listener. End it with `end_link_span`."""
    return tracer.start_span(
        S.CLUSTER_LINK, context=otel_context.Context(),
        kind=SpanKind.CLIENT if dialer == node else SpanKind.SERVER,
        attributes={S.CLUSTER_NODE: node, S.CLUSTER_PEER: peer, S.CLUSTER_PEER_ADDRESS: address,
                    S.CLUSTER_DIALER: dialer})


def end_link_span(span: trace.Span, *, code: int, reason: str, closed_by: str, normal: bool) -> None:
    """A link that ended for a failure (not normal: a shutdown or a duplicate) is an
    error of the link, with a `cluster.link_failed` event."""
    span.set_attributes({S.CLUSTER_CLOSE_CODE: code, S.CLUSTER_CLOSE_REASON: S.clip(reason),
                         S.CLUSTER_CLOSED_BY: closed_by})
    if not normal:
        span.add_event(S.CLUSTER_LINK_FAILED, {S.CLUSTER_CLOSE_CODE: code,
                                                S.EXCEPTION_MESSAGE: S.clip(reason)})
        span.set_status(Status(StatusCode.ERROR, f"link closed {code}: {reason}"[:200]))
    span.end()


def record_failed_handshake(tracer: trace.Tracer, *, node: str, where: str, exc: BaseException,
                            dialer: bool) -> None:
    """A refused or failed handshake: a short root span of its own with the error recorded."""
    span = tracer.start_span(S.CLUSTER_HANDSHAKE, context=otel_context.Context(),
                             kind=SpanKind.CLIENT if dialer else SpanKind.SERVER,
                             attributes={S.CLUSTER_NODE: node, S.CLUSTER_PEER_ADDRESS: where})
    S.fail(span, exc)
    span.end()
