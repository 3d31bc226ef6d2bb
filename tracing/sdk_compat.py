"""Every use of the OpenTelemetry SDK's private parts, in one place.

tracing/ relies on a few of the SDK's internals for speed (the lean tracer, our
encoder, the batch processor's queue) and for a quiet outage (one warning, not
one per batch). They are named here and nowhere else; tests/test_sdk_compat.py
checks each against the installed SDK (pyproject pins opentelemetry-* ==1.45.2),
so an upgrade that moves one fails there first, with the name that moved.

Hot paths get what they need built once (attribute getters, field names), not a
function call per span.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

# Private modules: the SDK's logs signal is still under `_logs`, in the API and the SDK.
from opentelemetry._logs import Logger, SeverityNumber, set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader

__all__ = [
    "BOUNDED_ATTRIBUTES_DICT",
    "HTTP_CLIENT_SHUTDOWN_EVENT",
    "LOG_EXPORTER_MODULE",
    "LOG_HTTP_EXPORTER_MODULE",
    "OTLP_EXPORTER_HOOKS",
    "READABLE_SPAN_FIELDS",
    "RECEIVE_METRICS_HOOK",
    "SDK_EXPORTER_LOGGER",
    "SDK_HTTP_EXPORTER_LOGGERS",
    "SDK_LOGGERS",
    "SHARED_INTERNAL_LOGGER",
    "BatchLogRecordProcessor",
    "LogRecordExportResult",
    "LogRecordExporter",
    "LogRecordProcessor",
    "Logger",
    "LoggerProvider",
    "LoggingHandler",
    "ReadWriteLogRecord",
    "SeverityNumber",
    "active_span_processor",
    "batch_queue",
    "bounded_attributes_dict",
    "exporter_channel",
    "is_shut_down",
    "otlp_http_log_exporter_class",
    "otlp_log_exporter_class",
    "preferred_aggregation",
    "preferred_temporality",
    "reader_is_registered",
    "receive_metrics",
    "set_exporter_client",
    "set_logger_provider",
    "span_fields",
    "span_group",
    "span_processors",
    "stop_retrying",
]

# -- ReadableSpan's fields (tracing/otlp_encoding.py reads them, tracing/lean.py's LeanSpan sets them)

READABLE_SPAN_FIELDS = ("_context", "_parent", "_attributes", "_name", "_kind", "_start_time",
                        "_end_time", "_events", "_links", "_status", "_resource",
                        "_instrumentation_scope")
# One C call per span for the fields the encoder writes (its properties would copy
# events and links into tuples and wrap attributes in a proxy, per span, per export).
span_fields = attrgetter(*READABLE_SPAN_FIELDS[:10])
# What groups spans in an export request.
span_group = attrgetter("_resource", "_instrumentation_scope")

# BoundedAttributes keeps a plain dict: iterating it directly skips a call per item.
BOUNDED_ATTRIBUTES_DICT = "_dict"


def bounded_attributes_dict(attributes: Any) -> Any:
    """The plain dict behind a BoundedAttributes (or the mapping itself)."""
    return getattr(attributes, BOUNDED_ATTRIBUTES_DICT, attributes)


# -- TracerProvider and BatchSpanProcessor ---------------------------------------------

def active_span_processor(provider: Any) -> Any:
    """The provider's multi-processor, which the SDK's own Tracer is built with."""
    return provider._active_span_processor


def span_processors(multi: Any) -> tuple[Any, ...] | None:
    """The multi-processor's current tuple of processors (replaced when one is added), or
    None when it is not the SDK's multi-processor."""
    return getattr(multi, "_span_processors", None)


def batch_queue(processor: Any) -> tuple[Any, Any, Any] | None:
    """A BatchSpanProcessor's worker (BatchProcessor), its queue (a bounded deque) and its
    wake-up event; None on another layout (callers then take the SDK's own path)."""
    batch = getattr(processor, "_batch_processor", None)
    queue = getattr(batch, "_queue", None)
    awaken = getattr(batch, "_worker_awaken", None)
    if batch is None or queue is None or awaken is None or not hasattr(batch, "_shutdown"):
        return None
    return batch, queue, awaken


# Read on every span end: an attribute getter, built once.
is_shut_down = attrgetter("_shutdown")


# -- OTLP exporters --------------------------------------------------------------------

# The SDK's OTLP gRPC exporters (spans, metrics, logs) all log from this logger, and the
# batch processors (spans, logs) from the second. Its OTLP/HTTP exporters log from their
# own modules' loggers (the third group).
SDK_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.grpc.exporter"
SHARED_INTERNAL_LOGGER = "opentelemetry.sdk._shared_internal"
LOG_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.grpc._log_exporter"
LOG_HTTP_EXPORTER_MODULE = "opentelemetry.exporter.otlp.proto.http._log_exporter"
SDK_HTTP_EXPORTER_LOGGERS = ("opentelemetry.exporter.otlp.proto.http.trace_exporter",
                             "opentelemetry.exporter.otlp.proto.http.metric_exporter",
                             LOG_HTTP_EXPORTER_MODULE)
SDK_LOGGERS = (SDK_EXPORTER_LOGGER, SHARED_INTERNAL_LOGGER, *SDK_HTTP_EXPORTER_LOGGERS)


def otlp_log_exporter_class() -> type[LogRecordExporter]:
    """The OTLP gRPC log exporter (a private module of the exporter package)."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    return OTLPLogExporter


# The OTLP/HTTP exporters retry in their client (`_client`, opentelemetry-exporter-otlp-common's
# _OTLPHTTPClient), whose backoff waits on this event.
HTTP_CLIENT_SHUTDOWN_EVENT = "_shutdown_event"


def otlp_http_log_exporter_class() -> type[LogRecordExporter]:
    """The OTLP/HTTP log exporter (a private module of the HTTP exporter package), imported on
    first use (it loads `requests`)."""
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter


def stop_retrying(exporter: object) -> None:
    """Make an SDK OTLP exporter's (gRPC or HTTP) next failed export its last attempt (it backs
    off and retries until its own timeout otherwise). The SDK sets the same event itself, but only
    once the exporter is shut down, after the final flush."""
    event = getattr(exporter, "_shutdown_in_progress", None)  # gRPC: the exporter's own
    if event is None:  # HTTP: the retry loop is its OTLP client's (exporter._client)
        event = getattr(getattr(exporter, "_client", None), HTTP_CLIENT_SHUTDOWN_EVENT, None)
    if event is not None:
        event.set()


def exporter_channel(exporter: Any) -> Any:
    """The gRPC channel an OTLP exporter has just (re)initialised."""
    return exporter._channel


def set_exporter_client(exporter: Any, client: Any) -> None:
    """Replace the stub an OTLP exporter calls `Export(request=..., metadata=..., timeout=...)` on."""
    exporter._client = client


# Methods tracing/otlp_exporter.py overrides on OTLPSpanExporter.
OTLP_EXPORTER_HOOKS = ("_initialize_channel_and_stub", "_translate_data")


# -- metrics ---------------------------------------------------------------------------

def preferred_temporality(exporter: MetricExporter) -> Any:
    return exporter._preferred_temporality


def preferred_aggregation(exporter: MetricExporter) -> Any:
    return exporter._preferred_aggregation


# The hook a MetricReader's collect() hands its figures to (NodeMetricReader overrides it).
RECEIVE_METRICS_HOOK = "_receive_metrics"


def receive_metrics(cls: type[MetricReader], reader: MetricReader, metrics_data: Any,
                    timeout_millis: float, **kwargs: Any) -> None:
    """`cls`'s own _receive_metrics (a subclass's call to its base's hook)."""
    getattr(cls, RECEIVE_METRICS_HOOK)(reader, metrics_data, timeout_millis, **kwargs)


def reader_is_registered(reader: MetricReader) -> bool:
    """Whether a provider has registered the reader (collect() would do nothing before)."""
    return reader._collect is not None  # type: ignore[attr-defined]
