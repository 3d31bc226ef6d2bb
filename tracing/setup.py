"""Configure tracing from conf/opentelemetry.toml and the standard OTEL_* variables.

The exporter runs on the BatchSpanProcessor's own thread; nothing here blocks
the Trio loop. A collector that is down costs a bounded queue and one warning.

The same file holds the sampler (`[traces.sampler]`, tracing/sampling.py) and
the logs' format and OTLP export (`[logs]`, tracing/log_correlation.py).
"""

from __future__ import annotations

import logging
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace import TracerProvider as ApiTracerProvider

from tracing.config_tables import checked_table
from tracing.errors import TelemetryConfigError
from tracing.export_health import (
    CountingBatchSpanProcessor,
    ExportHealth,
    ExportWatch,
    HealthReportingExporter,
    HealthReportingLogExporter,
    stop_retrying,
)
from tracing.log_correlation import LogsConfig, OtlpLogHandler, parse_logs_table, set_log_identity
from tracing.metrics import MetricsHandle, make_meter_provider
from tracing.metrics_export import MetricsConfig, make_otlp_metric_exporter, parse_metrics_table
from tracing.metrics_export import with_environment as metrics_with_environment
from tracing.otel_env import (
    GRPC,
    HTTP_DEFAULT_ENDPOINT,
    HTTP_PROTOBUF,
    OtelEnv,
    OtlpSignal,
    otlp_http_url,
    parse_headers,
    read_otel_env,
)
from tracing.sampling import (
    SamplerConfig,
    build_sampler,
    describe_sampler,
    parse_sampler_table,
    with_environment,
)
from tracing.sdk_compat import (
    BatchLogRecordProcessor,
    LoggerProvider,
    LogRecordExporter,
    otlp_http_log_exporter_class,
    otlp_log_exporter_class,
    set_logger_provider,
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
    otel: OtelEnv = field(default_factory=OtelEnv)  # the OTEL_* variables it was built with

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_tracing_config(path: str | Path, environ: Mapping[str, str] | None = None) -> TracingConfig:
    """conf/opentelemetry.toml, then the OTEL_* variables over it (read by tracing/otel_env.py,
    from `environ`, os.environ when None). Raises TelemetryConfigError naming the key or variable."""
    otel = read_otel_env(environ)
    p = Path(path)
    data: dict[str, Any] = {}
    if p.exists():
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise TelemetryConfigError(f"{p} is not valid TOML: {exc}") from None
    for key in data:
        if key not in ("resource", "traces", "logs", "metrics"):
            raise TelemetryConfigError(f"{p}: unknown table [{key}]")
    prefix = f"{p}: "
    checked_table(data.get("resource", {}), "resource", _FILE_KEYS["resource"], prefix)
    traces = dict(checked_table(data.get("traces", {}), "traces", _FILE_KEYS["traces"], prefix))
    batch = checked_table(traces.pop("batch", {}), "traces.batch", _FILE_KEYS["traces.batch"], prefix)
    values: dict[str, Any] = {**traces, **batch}
    values["sampler"] = parse_sampler_table(traces.get("sampler", {}), str(p))
    values["logs"] = parse_logs_table(data.get("logs", {}), str(p))
    values["metrics"] = parse_metrics_table(data.get("metrics", {}), str(p))
    if "service_name" in data.get("resource", {}):
        values["service_name"] = data["resource"]["service_name"]
    cfg = TracingConfig(**values)
    if cfg.protocol != GRPC:
        raise TelemetryConfigError(f"{p}: traces.protocol {cfg.protocol!r} is not supported (use 'grpc'; "
                                   f"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf selects OTLP/HTTP)")

    # The standard variables win over the file.
    overrides: dict[str, Any] = {"otel": otel}
    if otel.sdk_disabled or otel.traces_exporter == "none":
        overrides["enabled"] = False
    if otel.service_name is not None:
        overrides["service_name"] = otel.service_name
    traces_env = otel.traces
    if traces_env.endpoint is not None:
        overrides["endpoint"] = traces_env.endpoint
    if traces_env.protocol is not None:
        overrides["protocol"] = traces_env.protocol
    if traces_env.protocol == HTTP_PROTOBUF:
        # OTLP/HTTP's URL comes from the variables alone (the file's endpoint is a gRPC one).
        overrides["endpoint"] = _http_endpoint(traces_env, "traces")
    if traces_env.compression is not None:
        overrides["compression"] = traces_env.compression
    if traces_env.timeout_s is not None:
        overrides["timeout_s"] = traces_env.timeout_s
    overrides.update(otel.bsp)
    # OTEL_TRACES_SAMPLER (and its _ARG), when set, wins over [traces.sampler].
    overrides["sampler"] = with_environment(cfg.sampler, otel)
    if otel.sdk_disabled:
        overrides["logs"] = replace(cfg.logs, otlp_export=False)
    elif otel.logs_exporter is not None:
        overrides["logs"] = replace(cfg.logs, otlp_export=otel.logs_exporter == "otlp")
    overrides["metrics"] = metrics_with_environment(cfg.metrics, otel)
    cfg = replace(cfg, **overrides)
    if cfg.max_export_batch_size > cfg.max_queue_size:
        raise TelemetryConfigError(
            f"traces.batch: max_export_batch_size ({cfg.max_export_batch_size}) must not "
            f"exceed max_queue_size ({cfg.max_queue_size})")
    if cfg.compression not in ("gzip", "deflate", "none"):
        raise TelemetryConfigError(f"traces.compression {cfg.compression!r}: use gzip, deflate or none")
    return cfg


def make_resource(cfg: TracingConfig, node_name: str) -> Resource:
    # Resource.create merges the process's OTEL_RESOURCE_ATTRIBUTES itself; the checked
    # ones are given too, so an `environ` passed to load_tracing_config counts as well.
    return Resource.create({**cfg.otel.resource_attributes, "service.name": cfg.service_name,
                            "service.instance.id": node_name})


def _http_endpoint(signal: OtlpSignal, name: str) -> str:
    return signal.http_endpoint or otlp_http_url(HTTP_DEFAULT_ENDPOINT, name)


def make_otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    """Spans over OTLP/gRPC (our encoder, tracing/otlp_exporter.py), or with
    OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=http/protobuf the SDK's OTLP/HTTP exporter."""
    from tracing.otlp_exporter import FastOTLPSpanExporter, grpc_compression, http_compression

    if cfg.protocol == HTTP_PROTOBUF:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=cfg.endpoint, compression=http_compression(cfg.compression),
                                timeout=cfg.timeout_s, headers=parse_headers(cfg.otel.traces.headers))
    return FastOTLPSpanExporter(endpoint=cfg.endpoint, compression=grpc_compression(cfg.compression),
                                timeout=cfg.timeout_s, headers=cfg.otel.traces.headers)


def _signal_settings(cfg: TracingConfig, signal: OtlpSignal, name: str) -> tuple[str, str, str, float]:
    """A signal's (metrics, logs) protocol, endpoint, compression and timeout.

    The protocol is the signal's own OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL or the general one,
    else grpc. Over gRPC: its own OTEL_EXPORTER_OTLP_<SIGNAL>_* when set, else the traces'
    (the file's [traces] and the general variables; when the traces go over HTTP, the
    default gRPC endpoint). Over HTTP: the URL of tracing/otel_env.py (`http_endpoint`)."""
    protocol = signal.protocol or GRPC
    if protocol == HTTP_PROTOBUF:
        endpoint = _http_endpoint(signal, name)
    else:
        endpoint = signal.endpoint or (cfg.endpoint if cfg.protocol == GRPC else TracingConfig.endpoint)
    return protocol, endpoint, signal.compression or cfg.compression, signal.timeout_s or cfg.timeout_s


def make_otlp_log_exporter(cfg: TracingConfig) -> LogRecordExporter:
    """OTLP logs to the traces' endpoint (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, when set, wins), over
    gRPC or, with OTEL_EXPORTER_OTLP_[LOGS_]PROTOCOL=http/protobuf, over HTTP (the SDK's exporters)."""
    from tracing.otlp_exporter import grpc_compression, http_compression

    protocol, endpoint, compression, timeout_s = _signal_settings(cfg, cfg.otel.logs, "logs")
    if protocol == HTTP_PROTOBUF:
        return otlp_http_log_exporter_class()(  # type: ignore[call-arg]
            endpoint=endpoint, compression=http_compression(compression), timeout=timeout_s,
            headers=parse_headers(cfg.otel.logs.headers))
    return otlp_log_exporter_class()(endpoint=endpoint, compression=grpc_compression(compression),  # type: ignore[call-arg]
                                     timeout=timeout_s, headers=cfg.otel.logs.headers)


class Telemetry:
    """What a running node holds of OpenTelemetry: its provider and how to stop it."""

    def __init__(self, provider: ApiTracerProvider, config: TracingConfig,
                 health: ExportHealth | None = None, *, sampler: Sampler | None = None,
                 log_provider: LoggerProvider | None = None,
                 log_handler: logging.Handler | None = None,
                 metrics: MetricsHandle | None = None,
                 exporters: tuple[object, ...] = (), log_watch: ExportWatch | None = None) -> None:
        self.provider = provider
        self.config = config
        self.health = health
        self.sampler = sampler
        self.log_provider = log_provider
        self.log_handler = log_handler
        self.metrics = metrics  # the node's meter provider (Prometheus reader + OTLP push)
        self.exporters = exporters  # span and log exporters, told at shutdown not to retry
        self.log_watch = log_watch  # the OTLP log export's health, when logs are exported

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
                          ) -> tuple[LoggerProvider, logging.Handler, HealthReportingLogExporter]:
    """A LoggerProvider exporting through a BatchLogRecordProcessor (its own thread), and
    a handler on the root logger feeding it every record."""
    log_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    endpoint = _signal_settings(cfg, cfg.otel.logs, "logs")[1]
    watched = HealthReportingLogExporter(exporter if exporter is not None else make_otlp_log_exporter(cfg),
                                         endpoint)
    log_provider.add_log_record_processor(BatchLogRecordProcessor(watched))
    handler = OtlpLogHandler(log_provider)
    logging.getLogger().addHandler(handler)
    return log_provider, handler, watched


_global_providers: list[str] = []  # who set the process's global providers (once per process)


def set_global_providers(telemetry: Telemetry, node_name: str) -> bool:
    """Make the node's providers the process's global ones (trace, metrics, logs), so
    third-party instrumentations and `opentelemetry-instrument` join its pipeline. Once per
    process: a second node in the same process keeps its own (False)."""
    if _global_providers:
        log.debug("global OpenTelemetry providers already set by node %s", _global_providers[0])
        return False
    _global_providers.append(node_name)
    from opentelemetry import metrics, trace

    if isinstance(telemetry.provider, TracerProvider):
        trace.set_tracer_provider(telemetry.provider)
    if telemetry.metrics is not None:
        metrics.set_meter_provider(telemetry.metrics.provider)
    if telemetry.log_provider is not None:
        set_logger_provider(telemetry.log_provider)
    return True


def configure_tracing(
    config_path: str | Path, node_name: str, *, exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None, log_exporter: LogRecordExporter | None = None,
    set_global: bool = False,
) -> Telemetry:
    """Build the node's tracer provider. `exporter` replaces OTLP (tests, benchmarks), and
    `log_exporter` the OTLP log exporter when `[logs] otlp_export` is on. `set_global`
    (the server's entry points; never tests, which inject their providers) also makes them
    the process's global providers (set_global_providers).

    Log records carry this node's name and the service name from here on.
    """
    cfg = load_tracing_config(config_path, environ)
    set_log_identity(service=cfg.service_name, node=node_name)
    resource = make_resource(cfg, node_name)
    log_provider: LoggerProvider | None = None
    log_handler: logging.Handler | None = None
    log_watch: ExportWatch | None = None
    log_exporters: tuple[object, ...] = ()
    if cfg.logs.otlp_export:
        log_provider, log_handler, watched = configure_logs_export(cfg, resource, exporter=log_exporter)
        log_watch, log_exporters = watched.watch, (watched.inner,)
    # Metrics do not depend on traces being on (OTEL_TRACES_EXPORTER=none keeps them).
    push = None
    if cfg.metrics.otlp_export:
        protocol, endpoint, compression, timeout_s = _signal_settings(cfg, cfg.otel.metrics, "metrics")
        push = make_otlp_metric_exporter(endpoint=endpoint, compression=compression, timeout_s=timeout_s,
                                         headers=cfg.otel.metrics.headers, protocol=protocol)
    metrics = make_meter_provider(resource, push=push, push_interval_s=cfg.metrics.interval_s)
    if not cfg.enabled:
        telemetry = Telemetry(NoOpTracerProvider(), cfg, log_provider=log_provider, log_handler=log_handler,
                              metrics=metrics, exporters=log_exporters, log_watch=log_watch)
    else:
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
        telemetry = Telemetry(provider, cfg, health, sampler=sampler, log_provider=log_provider,
                              log_handler=log_handler, metrics=metrics, exporters=(inner, *log_exporters),
                              log_watch=log_watch)
    if set_global:
        set_global_providers(telemetry, node_name)
    return telemetry
