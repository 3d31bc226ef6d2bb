"""tracing/sdk_compat.py against the installed SDK: every private name it relies on exists,
so an SDK upgrade that moves one fails here first, naming it."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from typing import Any

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from tracing import sdk_compat as C
from tracing.lean import LeanTracer


class _Nowhere(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _sdk_span() -> ReadableSpan:
    provider = TracerProvider(shutdown_on_exit=False)
    span = provider.get_tracer("t").start_span("s", attributes={"a": 1})
    span.end()
    assert isinstance(span, ReadableSpan)
    return span


def test_a_real_readable_span_has_every_field_the_encoder_reads() -> None:
    span = _sdk_span()
    missing = [name for name in C.READABLE_SPAN_FIELDS if not hasattr(span, name)]
    assert not missing, f"ReadableSpan lost {missing}: update tracing/sdk_compat.py"
    fields = C.span_fields(span)
    assert fields[3] == "s" and fields[0] is span.get_span_context()
    assert C.span_group(span) == (span.resource, span.instrumentation_scope)


def test_the_lean_span_sets_the_same_fields() -> None:
    span = LeanTracer(TracerProvider(shutdown_on_exit=False), "t").start_span("s")
    span.end()
    assert all(hasattr(span, name) for name in C.READABLE_SPAN_FIELDS)


def test_bounded_attributes_keep_a_plain_dict() -> None:
    attributes = BoundedAttributes(attributes={"k": "v"})
    assert type(C.bounded_attributes_dict(attributes)) is dict


def test_provider_and_batch_processor_internals() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    processor = BatchSpanProcessor(_Nowhere())
    provider.add_span_processor(processor)
    multi = C.active_span_processor(provider)
    assert C.span_processors(multi) == (processor,)
    parts = C.batch_queue(processor)
    assert parts is not None, "BatchSpanProcessor's _batch_processor/_queue/_worker_awaken moved"
    batch, queue, awaken = parts
    assert len(queue) == 0 and not awaken.is_set() and C.is_shut_down(batch) is False
    provider.shutdown()
    assert C.is_shut_down(batch) is True


def test_otlp_exporter_internals() -> None:
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    for hook in C.OTLP_EXPORTER_HOOKS:
        assert callable(getattr(OTLPSpanExporter, hook, None)), f"OTLPSpanExporter.{hook} is gone"
    assert C.exporter_channel(exporter) is not None
    assert hasattr(exporter, "_client")
    event = exporter._shutdown_in_progress
    C.stop_retrying(exporter)
    assert event.is_set()
    exporter.shutdown()


def test_metric_internals() -> None:
    exporter = OTLPMetricExporter(endpoint="http://127.0.0.1:9", insecure=True)
    assert C.preferred_temporality(exporter) and C.preferred_aggregation(exporter) is not None
    exporter.shutdown()
    for cls in (MetricReader, PrometheusMetricReader):
        assert callable(getattr(cls, C.RECEIVE_METRICS_HOOK, None)), f"{cls.__name__}._receive_metrics"
    assert C.reader_is_registered(PrometheusMetricReader()) is False


@pytest.mark.parametrize("name", C.SDK_LOGGERS)
def test_the_sdk_logs_from_the_loggers_we_hold_back(name: str) -> None:
    module = importlib.import_module(name)
    logger = getattr(module, "logger", None) or getattr(module, "_logger", None)
    assert isinstance(logger, logging.Logger) and logger.name == name


def test_the_private_log_modules() -> None:
    assert importlib.import_module(C.LOG_EXPORTER_MODULE)
    exporter_class = C.otlp_log_exporter_class()
    assert issubclass(exporter_class, C.LogRecordExporter)
    assert all(map(callable, (C.LoggingHandler, C.BatchLogRecordProcessor, C.LoggerProvider,
                              C.set_logger_provider)))
    # bench/log_handler.py's stripping processor (the SDK handler measured as ours behaves).
    assert issubclass(C.BatchLogRecordProcessor, C.LogRecordProcessor)
    assert "log_record" in {f.name for f in dataclasses.fields(C.ReadWriteLogRecord)}


@pytest.mark.parametrize("module", ["opentelemetry.exporter.otlp.proto.http.trace_exporter",
                                    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
                                    C.LOG_HTTP_EXPORTER_MODULE])
def test_otlp_http_exporter_internals(module: str) -> None:
    """The OTLP/HTTP exporters retry in their client, on whose event stop_retrying cuts the
    backoff short; they log from their own module's logger, one we hold back."""
    name = {"trace_exporter": "OTLPSpanExporter", "metric_exporter": "OTLPMetricExporter",
            "_log_exporter": "OTLPLogExporter"}[module.rpartition(".")[2]]
    exporter_class: Any = getattr(importlib.import_module(module), name)
    if module == C.LOG_HTTP_EXPORTER_MODULE:
        assert exporter_class is C.otlp_http_log_exporter_class()
        assert issubclass(exporter_class, C.LogRecordExporter)
    exporter = exporter_class(endpoint="http://127.0.0.1:9/v1/x")
    event = getattr(exporter._client, C.HTTP_CLIENT_SHUTDOWN_EVENT)
    assert not event.is_set()
    C.stop_retrying(exporter)
    assert event.is_set()
    assert module in C.SDK_LOGGERS
    exporter.shutdown()
