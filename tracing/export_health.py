"""Exporter health: one warning when span export starts failing, one line when it
recovers, and counters for the troubleshooting page, instead of the SDK's log
line per failed batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

log = logging.getLogger("tracing.export")

# The SDK's OTLP gRPC exporters (spans, metrics, logs) all log from this one.
SDK_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
# The SDK logs each failed batch and each dropped span from these loggers.
_NOISY_LOGGERS = (SDK_EXPORTER_LOGGER,
                  "opentelemetry.sdk._shared_internal")


def stop_retrying(exporter: object) -> None:
    """Make an SDK OTLP exporter's next failed export its last attempt (it backs off
    and retries until its own timeout otherwise): at shutdown, so a collector that
    is not there does not hold the node's exit for shutdown_timeout. The SDK sets
    the same event itself, but only once the exporter is shut down, after the
    final flush."""
    event = getattr(exporter, "_shutdown_in_progress", None)
    if event is not None:
        event.set()


class ExportHealth:
    """Counters shared between the exporter thread and readers; guarded by a lock."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self.exported = 0
        self.failed_exports = 0
        self.failed_spans = 0
        self.dropped_spans = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failing = False
        # Counted on the thread that starts spans (the event loop) without the lock:
        # one writer, and readers only need a recent value.
        self.started = 0
        self.queue_size: Callable[[], int] = lambda: 0

    def record_sdk_message(self, record: logging.LogRecord) -> None:
        with self._lock:
            if "dropping" in record.getMessage():
                self.dropped_spans += 1
            else:
                self.last_error = record.getMessage()
                self.last_error_at = time.time()

    def exported_ok(self, spans: int) -> bool:
        """Count a successful export; True when it ends a failing stretch."""
        with self._lock:
            self.exported += spans
            recovered, self.failing = self.failing, False
        return recovered

    def export_failed(self, spans: int) -> str | None:
        """Count a failed export; the reason when it starts a failing stretch, else None."""
        with self._lock:
            self.failed_exports += 1
            self.failed_spans += spans
            first, self.failing = not self.failing, True
            return (self.last_error or "unknown error") if first else None

    def counts(self) -> dict[str, int]:
        """The counters alone, for metrics."""
        with self._lock:
            return {"exported": self.exported, "dropped": self.dropped_spans,
                    "failed_exports": self.failed_exports}

    def span_dropped(self) -> None:
        with self._lock:
            self.dropped_spans += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"endpoint": self.endpoint, "started_spans": self.started,
                    "queued_spans": self.queue_size(), "exported_spans": self.exported,
                    "failed_exports": self.failed_exports, "failed_spans": self.failed_spans,
                    "dropped_spans": self.dropped_spans, "last_error": self.last_error,
                    "last_error_at": self.last_error_at, "failing": self.failing}


class _CaptureSdkNoise(logging.Filter):
    """Swallow the SDK's per-batch warnings, keeping their text as the last error."""

    def __init__(self, health: ExportHealth) -> None:
        super().__init__()
        self.health = health

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            # The logger is shared with the metric and log exporters, which report
            # their own failures once (tracing/metrics_export.py): not span errors.
            message = record.getMessage()
            if not any(f" {other} " in message for other in ("metrics", "logs")):
                self.health.record_sdk_message(record)
            return False
        return True


class HealthReportingExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, health: ExportHealth) -> None:
        self.inner = inner
        self.health = health
        self._filter = _CaptureSdkNoise(health)
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).addFilter(self._filter)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the export thread
            self.health.record_sdk_message(logging.makeLogRecord({"msg": repr(exc)}))
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self.health.exported_ok(len(spans)):
                log.warning("span export to %s recovered", self.health.endpoint)
        elif (reason := self.health.export_failed(len(spans))) is not None:
            log.warning(
                "cannot export spans to %s (%s); serving continues and spans are "
                "dropped until the collector answers (see README, Troubleshooting)",
                self.health.endpoint, reason)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).removeFilter(self._filter)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """Drops a span at once when the queue is full, and counts it.

    The SDK would log a warning per dropped span: while the collector is down
    that is two log records per request, a measurable cost (see bench/).
    """

    def __init__(self, exporter: SpanExporter, health: ExportHealth, *, max_queue_size: int,
                 schedule_delay_millis: int, max_export_batch_size: int,
                 export_timeout_millis: int) -> None:
        super().__init__(exporter, max_queue_size=max_queue_size,
                         schedule_delay_millis=schedule_delay_millis,
                         max_export_batch_size=max_export_batch_size,
                         export_timeout_millis=export_timeout_millis)
        self.health = health
        # The SDK's queue (a bounded deque) and worker wake-up, used by on_end.
        batch = self._batch_processor
        self._queue = getattr(batch, "_queue", None)
        self._awaken = getattr(batch, "_worker_awaken", None)
        self._limit = max_queue_size
        self._batch_size = max_export_batch_size
        queue = self._queue
        health.queue_size = (lambda: len(queue)) if queue is not None else (lambda: 0)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.health.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        queue, awaken = self._queue, self._awaken
        if queue is None or awaken is None or self._batch_processor._shutdown:
            super().on_end(span)  # another SDK layout, or shut down: the SDK's own path
            return
        if not (span.context and span.context.trace_flags.sampled):
            return
        if len(queue) >= self._limit:
            self.health.span_dropped()
            return
        # The SDK's emit(), without its per-span fork check (a getpid() system call:
        # the node never forks once tracing has started).
        queue.appendleft(span)
        if len(queue) >= self._batch_size and not awaken.is_set():
            awaken.set()
