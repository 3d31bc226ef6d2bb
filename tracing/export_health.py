"""Exporter health: one warning when an export starts failing, one line when it
recovers, and counters for the troubleshooting page, instead of the SDK's log
line per failed batch.

`ExportWatch` is the one wrapper spans, metrics and logs use: it calls the
exporter's export() and reads its public result (SpanExportResult,
MetricExportResult, LogRecordExportResult). While that call runs, the SDK's
warnings on the calling thread (its per-attempt retries) are held back: the most
severe becomes the failure's reason, shown in the one warning and on the
troubleshooting page. Nothing matches the text of SDK log lines.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tracing.sdk_compat import (
    SDK_LOGGERS,
    LogRecordExporter,
    LogRecordExportResult,
    batch_queue,
    is_shut_down,
)
from tracing.sdk_compat import stop_retrying as stop_retrying

log = logging.getLogger("tracing.export")


class _HoldSdkWarnings(logging.Filter):
    """Installed once on the SDK's loggers: a warning logged on a thread that is inside
    a watched export is kept as that export's reason and not logged; any other record
    passes."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        held: list[tuple[int, str]] | None = getattr(self.local, "held", None)
        if held is None or record.levelno < logging.WARNING:
            return True
        held.append((record.levelno, record.getMessage()))
        return False


_HOLD = _HoldSdkWarnings()
for _name in SDK_LOGGERS:
    logging.getLogger(_name).addFilter(_HOLD)


class ExportWatch:
    """Counters for one exporter and its warn-once, log-recovery behaviour; thread-safe.

    `call(export, ok, items)` runs one export: `export()` returns the exporter's
    result, `ok` is its success value. `problem` and `recovery` are the warning and
    the recovery line, formatted with `endpoint=` and `reason=`.
    """

    def __init__(self, endpoint: str, *, problem: str, recovery: str) -> None:
        self.endpoint = endpoint
        self.problem = problem
        self.recovery = recovery
        self._lock = threading.Lock()
        self.exported = 0
        self.failed_exports = 0
        self.failed_items = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failing = False

    def call(self, export: Callable[[], object], ok: object, items: int) -> bool:
        """Run one export; True when it succeeded. An exception counts as a failure
        (an exporter bug must not kill the export thread)."""
        held: list[tuple[int, str]] = []
        _HOLD.local.held = held
        try:
            result = export()
            # The reason: the SDK's most severe message (its first, among equals: the last ones
            # say only that a retry was cut short at shutdown).
            reason = (max(held, key=lambda item: item[0])[1] if held
                      else f"export returned {getattr(result, 'name', result)}")
        except Exception as exc:
            result, reason = None, repr(exc)
        finally:
            _HOLD.local.held = None
        if result is ok or result == ok:
            self.exported_ok(items)
            return True
        self.export_failed(items, reason)
        return False

    def exported_ok(self, items: int) -> None:
        with self._lock:
            self.exported += items
            recovered, self.failing = self.failing, False
        if recovered:
            log.warning(self.recovery.format(endpoint=self.endpoint, reason=""))

    def export_failed(self, items: int, reason: str) -> None:
        with self._lock:
            self.failed_exports += 1
            self.failed_items += items
            self.last_error, self.last_error_at = reason, time.time()
            first, self.failing = not self.failing, True
        if first:
            log.warning(self.problem.format(endpoint=self.endpoint, reason=reason))


class ExportHealth(ExportWatch):
    """The span exporter's watch, with the batch processor's counts (started, queued, dropped)."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(
            endpoint,
            problem="cannot export spans to {endpoint} ({reason}); serving continues and spans are "
                    "dropped until the collector answers (see README, Troubleshooting)",
            recovery="span export to {endpoint} recovered")
        self.dropped_spans = 0
        # Counted on the thread that starts spans (the event loop) without the lock:
        # one writer, and readers only need a recent value.
        self.started = 0
        self.queue_size: Callable[[], int] = lambda: 0

    @property
    def failed_spans(self) -> int:
        return self.failed_items

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
                    "failed_exports": self.failed_exports, "failed_spans": self.failed_items,
                    "dropped_spans": self.dropped_spans, "last_error": self.last_error,
                    "last_error_at": self.last_error_at, "failing": self.failing}


class HealthReportingExporter(SpanExporter):
    def __init__(self, inner: SpanExporter, health: ExportHealth) -> None:
        self.inner = inner
        self.health = health

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self.health.call(lambda: self.inner.export(spans), SpanExportResult.SUCCESS, len(spans))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class HealthReportingLogExporter(LogRecordExporter):
    """The OTLP log exporter, watched like spans and metrics (one warning, one recovery line)."""

    def __init__(self, inner: LogRecordExporter, endpoint: str) -> None:
        self.inner = inner
        self.watch = ExportWatch(
            endpoint, problem="cannot export logs to {endpoint} ({reason}); log records are dropped "
                              "until the collector answers",
            recovery="log export to {endpoint} recovered")

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        ok = self.watch.call(lambda: self.inner.export(batch), LogRecordExportResult.SUCCESS, len(batch))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def shutdown(self) -> None:
        self.inner.shutdown()  # type: ignore[no-untyped-call]

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
        parts = batch_queue(self)
        self._batch: Any = parts[0] if parts is not None else None
        self._queue: Any = parts[1] if parts is not None else None
        self._awaken: Any = parts[2] if parts is not None else None
        self._limit = max_queue_size
        self._batch_size = max_export_batch_size
        queue = self._queue
        health.queue_size = (lambda: len(queue)) if queue is not None else (lambda: 0)

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.health.started += 1

    def on_end(self, span: ReadableSpan) -> None:
        queue, awaken = self._queue, self._awaken
        if queue is None or awaken is None or is_shut_down(self._batch):
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
