"""The span and metrics of one chat broadcast (the hub's fan-out), so the hub only
says what happened: how many members it reached, dropped, and forwarded to."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from tracing import spans as S
from tracing.metrics import Metrics


class BroadcastRecord:
    """What the fan-out reports while its span is open."""

    def __init__(self, span: trace.Span, remote_targets: dict[str, int]) -> None:
        self.span = span
        self.remote_targets = remote_targets
        self.delivered = 0  # members reached on this node
        self.dropped = 0  # frames dropped for slow consumers
        self.forwarded: list[str] = []  # other nodes the message went to


@contextmanager
def broadcast_span(tracer: trace.Tracer, metrics: Metrics | None, *, room: str, sender: str,
                   origin_node: str | None, remote_targets: dict[str, int]) -> Iterator[BroadcastRecord]:
    """`chat.broadcast` around a fan-out: CONSUMER for a message forwarded from
    origin_node, PRODUCER when other nodes have members (remote_targets), else
    INTERNAL. On exit: recipients (local plus, on a PRODUCER, the members this
    node knows of on each node it forwarded to), drops, duration; and the metrics."""
    started = time.perf_counter_ns()
    kind = (SpanKind.CONSUMER if origin_node is not None
            else SpanKind.PRODUCER if remote_targets else SpanKind.INTERNAL)
    attributes: dict[str, Any] = {S.CHAT_ROOM: S.clip(room), S.CHAT_SENDER: S.clip(sender)}
    if origin_node is not None:
        attributes[S.CHAT_ORIGIN_NODE] = origin_node
    with tracer.start_as_current_span(S.CHAT_BROADCAST, kind=kind, attributes=attributes) as span:
        record = BroadcastRecord(span, remote_targets)
        yield record
        recipients = record.delivered
        if remote_targets:
            span.set_attribute(S.CHAT_REMOTE_NODES, len(record.forwarded))
            span.set_attribute(S.CHAT_LOCAL_RECIPIENTS, record.delivered)
            recipients += sum(remote_targets.get(n, 0) for n in record.forwarded)
        span.set_attribute(S.CHAT_RECIPIENTS, recipients)
        span.set_attribute(S.CHAT_DROPPED, record.dropped)
        elapsed_ns = time.perf_counter_ns() - started
        span.set_attribute(S.CHAT_DURATION_US, elapsed_ns // 1000)
        if metrics is not None:
            metrics.chat_duration.record(elapsed_ns / 1e9)
            metrics.chat_recipients.record(recipients)
            if record.dropped:
                metrics.chat_dropped.add(record.dropped)
