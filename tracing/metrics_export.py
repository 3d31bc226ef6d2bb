"""OTLP metrics push: `[metrics]` of conf/opentelemetry.toml and the periodic reader.

    [metrics]
    otlp_export = true     # OTEL_METRICS_EXPORTER=otlp|none overrides
    interval_s = 30.0      # OTEL_METRIC_EXPORT_INTERVAL (milliseconds) overrides

The reader's exporter runs on the reader's own thread. Like spans, a dead
collector costs one warning (and one line when it recovers), not one per push.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from server.errors import ConfigError
from tracing.config_tables import checked_table, flag

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


class QuietMetricExporter(MetricExporter):
    """One warning when pushes start failing, one line when they recover."""

    def __init__(self, inner: MetricExporter, endpoint: str) -> None:
        super().__init__(preferred_temporality=inner._preferred_temporality,
                         preferred_aggregation=inner._preferred_aggregation)
        self.inner = inner
        self.endpoint = endpoint
        self.failing = False
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

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)


def make_otlp_metric_reader(cfg: MetricsConfig, *, endpoint: str, compression: str, timeout_s: float,
                            environ: Mapping[str, str]) -> PeriodicExportingMetricReader:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    from tracing.otlp_exporter import grpc_compression

    endpoint = environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or endpoint
    exporter = OTLPMetricExporter(endpoint=endpoint, compression=grpc_compression(compression),
                                  timeout=timeout_s)
    return PeriodicExportingMetricReader(QuietMetricExporter(exporter, endpoint),
                                         export_interval_millis=cfg.interval_s * 1000)
