"""OTLP metrics push: `[metrics]` of conf/opentelemetry.toml and the node's one metric reader.

    [metrics]
    otlp_export = true     # OTEL_METRICS_EXPORTER=otlp|none overrides
    interval_s = 30.0      # OTEL_METRIC_EXPORT_INTERVAL (milliseconds) overrides

`NodeMetricReader` is the node's one metric reader: `GET /metrics` renders it
(Prometheus), and when OTLP push is on a thread of its own collects the same
cumulative figures every interval and exports them there. One reader, not a
Prometheus reader beside an OTLP periodic reader, because the SDK aggregates
every measurement (and offers its exemplar) once per reader: a second reader
doubled the metrics' share of each request (~5% of HTTP throughput, bench/).
Like spans, a dead collector costs one warning (and one line when it recovers),
not one per push. OTLP gets cumulative temporality, as Prometheus needs. The push
goes over gRPC, or OTLP/HTTP with OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL=http/protobuf.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from prometheus_client import CollectorRegistry

from tracing.config_tables import checked_table, flag
from tracing.errors import TelemetryConfigError
from tracing.export_health import ExportWatch
from tracing.otel_env import GRPC, HTTP_PROTOBUF, OtelEnv, parse_headers
from tracing.sdk_compat import (
    preferred_aggregation,
    preferred_temporality,
    reader_is_registered,
    receive_metrics,
    stop_retrying,
)

log = logging.getLogger("tracing.export")

METRICS_KEYS = frozenset({"otlp_export", "interval_s"})


@dataclass(frozen=True)
class MetricsConfig:
    otlp_export: bool = True
    interval_s: float = 30.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_metrics_table(table: Any, where: str = "") -> MetricsConfig:
    prefix = f"{where}: " if where else ""
    table = checked_table(table, "metrics", METRICS_KEYS, prefix)
    otlp = flag(table, "metrics", "otlp_export", True, prefix)
    interval = table.get("interval_s", 30.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise TelemetryConfigError(f"{prefix}metrics.interval_s must be a positive number (got {interval!r})")
    return MetricsConfig(otlp, float(interval))


def with_environment(cfg: MetricsConfig, otel: OtelEnv) -> MetricsConfig:
    """OTEL_SDK_DISABLED, OTEL_METRICS_EXPORTER and OTEL_METRIC_EXPORT_INTERVAL over `[metrics]`."""
    otlp, interval = cfg.otlp_export, cfg.interval_s
    if otel.sdk_disabled:
        otlp = False
    elif otel.metrics_exporter is not None:
        otlp = otel.metrics_exporter == "otlp"
    if otel.metric_export_interval_ms is not None:
        interval = otel.metric_export_interval_ms / 1000
    return MetricsConfig(otlp, interval)


class QuietMetricExporter(MetricExporter):
    """One warning when pushes start failing, one line when they recover (ExportWatch)."""

    def __init__(self, inner: MetricExporter, endpoint: str) -> None:
        super().__init__(preferred_temporality=preferred_temporality(inner),
                         preferred_aggregation=preferred_aggregation(inner))
        self.inner = inner
        self.endpoint = endpoint
        self.watch = ExportWatch(endpoint, problem="cannot push metrics to {endpoint} ({reason}); "
                                                   "GET /metrics still serves them",
                                 recovery="metric export to {endpoint} recovered")

    @property
    def failing(self) -> bool:
        return self.watch.failing

    @property
    def failures(self) -> int:
        return self.watch.failed_exports

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
               ) -> MetricExportResult:
        ok = self.watch.call(lambda: self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs),
                             MetricExportResult.SUCCESS, 1)
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def stop_retrying(self) -> None:
        stop_retrying(self.inner)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def make_otlp_metric_exporter(*, endpoint: str, compression: str, timeout_s: float,
                              headers: str | None = None, protocol: str = GRPC) -> QuietMetricExporter:
    """The SDK's OTLP metric exporter for `protocol` (grpc, or http/protobuf: `endpoint` is then
    the full URL, .../v1/metrics), watched by QuietMetricExporter."""
    from tracing.otlp_exporter import grpc_compression, http_compression

    exporter: MetricExporter
    if protocol == HTTP_PROTOBUF:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        exporter = HttpMetricExporter(endpoint=endpoint, compression=http_compression(compression),
                                      timeout=timeout_s, headers=parse_headers(headers))
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=endpoint, compression=grpc_compression(compression),
                                      timeout=timeout_s, headers=headers)
    return QuietMetricExporter(exporter, endpoint)


class NodeMetricReader(PrometheusMetricReader):
    """Scraped through `registry`; pushed to `push` every `interval_s` when given
    (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, push: MetricExporter | None = None,
                 interval_s: float = 30.0) -> None:
        super().__init__(registry=registry)
        self._push = push
        self._interval_s = interval_s
        self._on_push_thread = threading.local()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if push is not None:
            self._thread = threading.Thread(target=self._push_loop, name="OtelMetricPush", daemon=True)
            self._thread.start()

    def _receive_metrics(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
                         **kwargs: Any) -> None:
        # collect() hands its figures here: the push thread's go out over OTLP,
        # a scrape's to the Prometheus collector that asked for them.
        if self._push is not None and getattr(self._on_push_thread, "active", False):
            self._push.export(metrics_data, timeout_millis=timeout_millis)
        else:
            receive_metrics(PrometheusMetricReader, self, metrics_data, timeout_millis, **kwargs)

    def _push_loop(self) -> None:
        self._on_push_thread.active = True
        while not self._stop.wait(self._interval_s):
            self._push_once()
        self._push_once()  # the last figures, at shutdown

    def _push_once(self) -> None:
        if not reader_is_registered(self):  # not registered with a provider (yet)
            return
        try:
            self.collect(timeout_millis=self._interval_s * 1000)
        except Exception as exc:  # a collection error must not end the push thread
            log.debug("metric collection failed: %r", exc)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        deadline = time.monotonic() + timeout_millis / 1000
        if isinstance(self._push, QuietMetricExporter):
            self._push.stop_retrying()  # the last push: one attempt
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._push is not None:
            self._push.shutdown(timeout_millis=max(0.0, deadline - time.monotonic()) * 1000)
        super().shutdown(timeout_millis, **kwargs)
