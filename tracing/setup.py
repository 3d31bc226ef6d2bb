"""Configure tracing from conf/opentelemetry.toml and the standard OTEL_* variables.

The exporter runs on the BatchSpanProcessor's own thread; nothing here blocks
the Trio loop. A collector that is down costs a bounded queue and one warning.

The same file holds the sampler (`[traces.sampler]`, tracing/sampling.py) and
the logs' format and OTLP export (`[logs]`, tracing/log_correlation.py).
"""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace import TracerProvider as ApiTracerProvider

from server.errors import ConfigError
from tracing.export_health import (
    CountingBatchSpanProcessor,
    ExportHealth,
    HealthReportingExporter,
    stop_retrying,
)
from tracing.log_correlation import LogsConfig, OtlpLogHandler, parse_logs_table, set_log_identity
from tracing.metrics import MetricsHandle, make_meter_provider
from tracing.metrics_export import MetricsConfig, make_otlp_metric_exporter, parse_metrics_table
from tracing.metrics_export import with_environment as metrics_with_environment
from tracing.sampling import (
    SamplerConfig,
    build_sampler,
    describe_sampler,
    parse_sampler_table,
    with_environment,
)

log = logging.getLogger(__name__)

_FILE_KEYS = {
    "resource": {"service_name"},
    "traces": {"enabled", "endpoint", "protocol", "compression", "timeout_s", "batch", "sampler"},
    "traces.batch": {"max_queue_size", "schedule_delay_ms", "max_export_batch_size",
                     "export_timeout_ms"},
}


@dataclass(frozen=True)
class TracingConfig:
    """The effective configuration, after the file and the environment."""

    enabled: bool = True
    service_name: str = "webserver"
    endpoint: str = "http://localhost:4317"
    protocol: str = "grpc"
    compression: str = "gzip"
    timeout_s: float = 10.0
    max_queue_size: int = 2048
    schedule_delay_ms: int = 5000
    max_export_batch_size: int = 512
    export_timeout_ms: int = 30000
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    logs: LogsConfig = field(default_factory=LogsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        if env.get(name):
            return env[name]
    return None


def load_tracing_config(path: str | Path, environ: Mapping[str, str] | None = None) -> TracingConfig:
    env = os.environ if environ is None else environ
    p = Path(path)
    data: dict[str, Any] = {}
    if p.exists():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    for table, allowed in (("resource", _FILE_KEYS["resource"]), ("traces", _FILE_KEYS["traces"])):
        section = data.get(table, {})
        for key in section:
            if key not in allowed:
                raise ConfigError(f"{p}: unknown key {table}.{key}")
    for key in data:
        if key not in ("resource", "traces", "logs", "metrics"):
            raise ConfigError(f"{p}: unknown table [{key}]")
    traces = dict(data.get("traces", {}))
    batch = traces.pop("batch", {})
    for key in batch:
        if key not in _FILE_KEYS["traces.batch"]:
            raise ConfigError(f"{p}: unknown key traces.batch.{key}")
    values: dict[str, Any] = {**traces, **batch}
    values["sampler"] = parse_sampler_table(traces.get("sampler", {}), str(p))
    values["logs"] = parse_logs_table(data.get("logs", {}), str(p))
    values["metrics"] = parse_metrics_table(data.get("metrics", {}), str(p))
    if "service_name" in data.get("resource", {}):
        values["service_name"] = data["resource"]["service_name"]
    cfg = TracingConfig(**values)

    # The standard variables win over the file.
    overrides: dict[str, Any] = {}
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER") == "none":
        overrides["enabled"] = False
    if name := env.get("OTEL_SERVICE_NAME"):
        overrides["service_name"] = name
    if endpoint := _first(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        overrides["endpoint"] = endpoint
    if comp := _first(env, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        overrides["compression"] = comp
    if timeout := _first(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        overrides["timeout_s"] = float(timeout)
    for var, key in (("OTEL_BSP_MAX_QUEUE_SIZE", "max_queue_size"),
                     ("OTEL_BSP_SCHEDULE_DELAY", "schedule_delay_ms"),
                     ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "max_export_batch_size"),
                     ("OTEL_BSP_EXPORT_TIMEOUT", "export_timeout_ms")):
        if env.get(var):
            overrides[key] = int(env[var])
    # OTEL_TRACES_SAMPLER (and its _ARG), when set, wins over [traces.sampler].
    overrides["sampler"] = with_environment(cfg.sampler, env)
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        overrides["logs"] = replace(cfg.logs, otlp_export=False)
    elif logs_exporter := env.get("OTEL_LOGS_EXPORTER", "").strip().lower():
        if logs_exporter not in ("otlp", "none"):
            raise ConfigError(f"OTEL_LOGS_EXPORTER {logs_exporter!r}: use otlp or none")
        overrides["logs"] = replace(cfg.logs, otlp_export=logs_exporter == "otlp")
    overrides["metrics"] = metrics_with_environment(cfg.metrics, env)
    cfg = replace(cfg, **overrides)
    if cfg.max_export_batch_size > cfg.max_queue_size:
        raise ConfigError(f"traces.batch: max_export_batch_size ({cfg.max_export_batch_size}) must not "
                          f"exceed max_queue_size ({cfg.max_queue_size})")
    if cfg.protocol != "grpc":
        raise ConfigError(f"{p}: traces.protocol {cfg.protocol!r} is not supported (use 'grpc')")
    if cfg.compression not in ("gzip", "deflate", "none"):
        raise ConfigError(f"traces.compression {cfg.compression!r}: use gzip, deflate or none")
    return cfg


def make_resource(cfg: TracingConfig, node_name: str) -> Resource:
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES.
    return Resource.create({"service.name": cfg.service_name, "service.instance.id": node_name})


def make_otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    from tracing.otlp_exporter import FastOTLPSpanExporter, grpc_compression

    return FastOTLPSpanExporter(endpoint=cfg.endpoint, compression=grpc_compression(cfg.compression),
                                timeout=cfg.timeout_s)


def make_otlp_log_exporter(cfg: TracingConfig, environ: Mapping[str, str] | None = None) -> LogRecordExporter:
    """OTLP gRPC logs to the traces' endpoint (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, when set, wins)."""
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    from tracing.otlp_exporter import grpc_compression

    env = os.environ if environ is None else environ
    return OTLPLogExporter(endpoint=env.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT") or cfg.endpoint,
                           compression=grpc_compression(cfg.compression), timeout=cfg.timeout_s)


class Telemetry:
    """What a running node holds of OpenTelemetry: its provider and how to stop it."""

    def __init__(self, provider: ApiTracerProvider, config: TracingConfig,
                 health: ExportHealth | None = None, *, sampler: Sampler | None = None,
                 log_provider: LoggerProvider | None = None,
                 log_handler: logging.Handler | None = None,
                 metrics: MetricsHandle | None = None,
                 exporters: tuple[object, ...] = ()) -> None:
        self.provider = provider
        self.config = config
        self.health = health
        self.sampler = sampler
        self.log_provider = log_provider
        self.log_handler = log_handler
        self.metrics = metrics  # the node's meter provider (Prometheus reader + OTLP push)
        self.exporters = exporters  # span and log exporters, told at shutdown not to retry

    def describe_sampling(self) -> dict[str, Any]:
        """The effective sampler as data, and where it came from."""
        if self.sampler is None:
            return {"sampler": "none", "description": "tracing is off"}
        source = "OTEL_TRACES_SAMPLER" if self.config.sampler.env_sampler else "traces.sampler"
        return {**describe_sampler(self.sampler), "source": source, "config": self.config.sampler.as_dict()}

    def shutdown(self, timeout_s: float) -> bool:
        """Flush and stop the exporters (spans, and logs when exported), waiting at most
        timeout_s; True if it finished.

        Runs on a helper thread because a dead collector makes the SDK's flush
        block for its own (longer) export timeout.
        """
        provider = self.provider if isinstance(self.provider, TracerProvider) else None
        log_provider = self.log_provider
        meter_provider = self.metrics.provider if self.metrics is not None else None
        if self.log_handler is not None:
            logging.getLogger().removeHandler(self.log_handler)
            self.log_handler = None
        if provider is None and log_provider is None and meter_provider is None:
            return True

        def stop() -> None:
            for exporter in self.exporters:  # the final flush: one attempt each
                stop_retrying(exporter)
            if provider is not None:
                provider.force_flush(int(timeout_s * 1000))
            if log_provider is not None:
                log_provider.force_flush(int(timeout_s * 1000))
            if provider is not None:
                provider.shutdown()
            if log_provider is not None:
                log_provider.shutdown()
            if isinstance(meter_provider, SdkMeterProvider):
                meter_provider.shutdown(timeout_millis=timeout_s * 1000)

        worker = threading.Thread(target=stop, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("span flush did not finish within %.1fs; unsent spans are dropped", timeout_s)
            return False
        return True


def configure_logs_export(cfg: TracingConfig, resource: Resource, *,
                          exporter: LogRecordExporter | None = None,
                          environ: Mapping[str, str] | None = None) -> tuple[LoggerProvider, logging.Handler]:
    """A LoggerProvider exporting through a BatchLogRecordProcessor (its own thread), and
    a handler on the root logger feeding it every record."""
    log_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    log_provider.add_log_record_processor(BatchLogRecordProcessor(
        exporter if exporter is not None else make_otlp_log_exporter(cfg, environ)))
    handler = OtlpLogHandler(log_provider)
    logging.getLogger().addHandler(handler)
    return log_provider, handler


def configure_tracing(
    config_path: str | Path, node_name: str, *, exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None, log_exporter: LogRecordExporter | None = None,
) -> Telemetry:
    """Build the node's tracer provider. `exporter` replaces OTLP (tests, benchmarks), and
    `log_exporter` the OTLP log exporter when `[logs] otlp_export` is on.

    Log records carry this node's name and the service name from here on.
    """
    cfg = load_tracing_config(config_path, environ)
    set_log_identity(service=cfg.service_name, node=node_name)
    resource = make_resource(cfg, node_name)
    if cfg.logs.otlp_export and log_exporter is None:
        log_exporter = make_otlp_log_exporter(cfg, environ)
    log_provider, log_handler = (
        configure_logs_export(cfg, resource, exporter=log_exporter, environ=environ)
        if cfg.logs.otlp_export else (None, None))
    log_exporters = (log_exporter,) if cfg.logs.otlp_export else ()
    # Metrics do not depend on traces being on (OTEL_TRACES_EXPORTER=none keeps them).
    env = os.environ if environ is None else environ
    push = (make_otlp_metric_exporter(endpoint=cfg.endpoint, compression=cfg.compression,
                                      timeout_s=cfg.timeout_s, environ=env)
            if cfg.metrics.otlp_export else None)
    metrics = make_meter_provider(resource, push=push, push_interval_s=cfg.metrics.interval_s)
    if not cfg.enabled:
        return Telemetry(NoOpTracerProvider(), cfg, log_provider=log_provider, log_handler=log_handler,
                         metrics=metrics, exporters=log_exporters)
    health = ExportHealth(cfg.endpoint)
    sampler = build_sampler(cfg.sampler)
    provider = TracerProvider(resource=resource, sampler=sampler, shutdown_on_exit=False)
    inner = exporter if exporter is not None else make_otlp_exporter(cfg)
    provider.add_span_processor(CountingBatchSpanProcessor(
        HealthReportingExporter(inner, health), health,
        max_queue_size=cfg.max_queue_size,
        schedule_delay_millis=cfg.schedule_delay_ms,
        max_export_batch_size=cfg.max_export_batch_size,
        export_timeout_millis=cfg.export_timeout_ms,
    ))
    return Telemetry(provider, cfg, health, sampler=sampler, log_provider=log_provider,
                     log_handler=log_handler, metrics=metrics, exporters=(inner, *log_exporters))
