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
not one per push. OTLP gets cumulative temporality, as Prometheus needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from prometheus_client import CollectorRegistry

from server.errors import ConfigError
from tracing.config_tables import checked_table, flag
from tracing.export_health import SDK_EXPORTER_LOGGER, stop_retrying

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
        raise ConfigError(f"{prefix}metrics.interval_s must be a positive number (got {interval!r})")
    return MetricsConfig(otlp, float(interval))


def with_environment(cfg: MetricsConfig, env: Mapping[str, str]) -> MetricsConfig:
    otlp, interval = cfg.otlp_export, cfg.interval_s
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        otlp = False
    elif exporter := env.get("OTEL_METRICS_EXPORTER", "").strip().lower():
        if exporter not in ("otlp", "none"):
            raise ConfigError(f"OTEL_METRICS_EXPORTER {exporter!r}: use otlp or none "
                              "(Prometheus is always served at GET /metrics)")
        otlp = exporter == "otlp"
    if raw := env.get("OTEL_METRIC_EXPORT_INTERVAL"):
        try:
            interval = int(raw) / 1000
        except ValueError:
            raise ConfigError(f"OTEL_METRIC_EXPORT_INTERVAL {raw!r}: milliseconds, an integer") from None
        if interval <= 0:
            raise ConfigError("OTEL_METRIC_EXPORT_INTERVAL must be positive")
    return MetricsConfig(otlp, interval)


class _SwallowMetricRetries(logging.Filter):
    """The SDK exporter's per-attempt warnings about metrics ("Transient error ...
    exporting metrics ..."): the first failure is reported once by QuietMetricExporter.
    The span exporter's own filter does the same for spans, but only while tracing is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (record.levelno >= logging.WARNING
                    and (" metrics " in message or message == _ABORTED_RETRY))


# What the SDK exporter logs when stop_retrying() cuts a retry short at shutdown.
_ABORTED_RETRY = "Shutdown in progress, aborting retry."


class QuietMetricExporter(MetricExporter):
    """One warning when pushes start failing, one line when they recover."""

    def __init__(self, inner: MetricExporter, endpoint: str) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner = inner
        self.endpoint = endpoint
        self.failing = False
        self._filter = _SwallowMetricRetries()
        logging.getLogger(SDK_EXPORTER_LOGGER).addFilter(self._filter)
        self.failures = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
               ) -> MetricExportResult:
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # an exporter bug must not kill the reader's thread
            log.debug("metric export raised %r", exc)
            result = MetricExportResult.FAILURE
        if result is MetricExportResult.SUCCESS:
            if self.failing:
                self.failing = False
                log.warning("metric export to %s recovered", self.endpoint)
        else:
            self.failures += 1
            if not self.failing:
                self.failing = True
                log.warning("cannot push metrics to %s; GET /metrics still serves them", self.endpoint)
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis)

    def stop_retrying(self) -> None:
        stop_retrying(self.inner)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
        logging.getLogger(SDK_EXPORTER_LOGGER).removeFilter(self._filter)


def make_otlp_metric_exporter(*, endpoint: str, compression: str, timeout_s: float,
                              environ: Mapping[str, str]) -> QuietMetricExporter:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    from tracing.otlp_exporter import grpc_compression

    endpoint = environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or endpoint
    exporter = OTLPMetricExporter(endpoint=endpoint, compression=grpc_compression(compression),
                                  timeout=timeout_s)
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
            super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    def _push_loop(self) -> None:
        self._on_push_thread.active = True
        while not self._stop.wait(self._interval_s):
            self._push_once()
        self._push_once()  # the last figures, at shutdown

    def _push_once(self) -> None:
        if self._collect is None:  # not registered with a provider (yet)
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
