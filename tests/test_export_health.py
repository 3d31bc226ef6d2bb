"""The exporter's health reporting: one warning, counted drops, recovery."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tracing.export_health import CountingBatchSpanProcessor, ExportHealth, HealthReportingExporter


class Switchable(SpanExporter):
    def __init__(self, *, hold: bool = False) -> None:
        self.up = False
        self.entered = threading.Event()  # an export has begun
        self.release = threading.Event()
        if not hold:
            self.release.set()
        self.exported: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(10)
        if not self.up:
            return SpanExportResult.FAILURE
        self.exported.extend(spans)
        return SpanExportResult.SUCCESS


def test_one_warning_while_down_one_line_on_recovery(caplog: pytest.LogCaptureFixture) -> None:
    inner = Switchable()
    health = ExportHealth("http://collector:4317")
    exporter = HealthReportingExporter(inner, health)
    caplog.set_level(logging.WARNING, logger="tracing.export")
    for _ in range(5):
        assert exporter.export([]) is SpanExportResult.FAILURE
    warnings = [r for r in caplog.records if "cannot export spans" in r.getMessage()]
    assert len(warnings) == 1 and "http://collector:4317" in warnings[0].getMessage()
    assert health.snapshot()["failed_exports"] == 5 and health.failing
    inner.up = True
    assert exporter.export([]) is SpanExportResult.SUCCESS
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1
    assert not health.failing
    exporter.shutdown()


def test_full_queue_drops_and_counts_without_logging(caplog: pytest.LogCaptureFixture) -> None:
    inner = Switchable(hold=True)  # the collector hangs: the export thread is stuck in it
    health = ExportHealth("x")
    processor = CountingBatchSpanProcessor(
        HealthReportingExporter(inner, health), health, max_queue_size=10,
        schedule_delay_millis=60_000, max_export_batch_size=10, export_timeout_millis=1000)
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    caplog.set_level(logging.WARNING)
    for _ in range(10):  # a full batch wakes the worker, which takes it and hangs
        tracer.start_span("s").end()
    assert inner.entered.wait(5)
    for _ in range(25):  # 10 fit in the queue, 15 do not
        tracer.start_span("s").end()
    assert health.snapshot()["dropped_spans"] == 15
    assert not [r for r in caplog.records if "Queue full" in r.getMessage()]
    inner.up = True
    inner.release.set()
    provider.shutdown()
    assert len(inner.exported) == 20
