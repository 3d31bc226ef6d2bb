"""The span and metric around one KV operation, for every engine.

A request error is recognised by its `status` (an HTTP status, as
server/errors.py's RequestError has) and may name its metric outcome in
`outcome`; tracing/ never imports server/, so this is duck-typed.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from tracing import spans as S
from tracing.metrics import Metrics

_OUTCOMES = {503: "quorum_failure", 507: "store_full"}


class KVSpan:
    """A kv span around a block: made current when others are asked (their spans are
    its children), duration recorded (span and metric), an unavailable engine or
    quorum (503) or a fault as ERROR, a client's mistake (4xx) or a full store left unset."""

    def __init__(self, span: trace.Span, current: bool, operation: str,
                 metrics: Metrics | None) -> None:
        self.span = span
        self._use = trace.use_span(span, end_on_exit=False, record_exception=False,
                                   set_status_on_exception=False) if current else None
        self._operation = operation
        self._metrics = metrics
        self._found: bool | None = None

    def __enter__(self) -> KVSpan:
        self._started = time.perf_counter_ns()
        if self._use is not None:
            self._use.__enter__()
        return self

    def set_attribute(self, key: str, value: Any) -> None:
        self.span.set_attribute(key, value)

    def found(self, value: bool) -> None:
        self._found = value
        self.span.set_attribute(S.KV_FOUND, value)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        try:
            outcome = "not_found" if self._found is False else "ok"
            status = getattr(exc, "status", None)
            if isinstance(exc, Exception) and isinstance(status, int):
                outcome = getattr(exc, "outcome", None) or _OUTCOMES.get(status, "error")
                if status == 503:
                    self.span.set_status(Status(StatusCode.ERROR, str(exc)[:200]))
            elif isinstance(exc, Exception):
                outcome = "error"
                S.fail(self.span, exc)
            elapsed_ns = time.perf_counter_ns() - self._started
            self.span.set_attribute(S.KV_DURATION_US, elapsed_ns // 1000)
            self.span.end()
            if self._metrics is not None and (exc is None or isinstance(exc, Exception)):
                self._metrics.kv_duration.record(elapsed_ns / 1e9, {
                    "kv.operation": self._operation, "kv.outcome": outcome})
        finally:
            if self._use is not None:
                self._use.__exit__(kind, exc, tb)
