"""Configure tracing from conf/opentelemetry.toml and the standard OTEL_* variables.

The exporter runs on the BatchSpanProcessor's own thread; nothing here blocks
the Trio loop. A collector that is down costs a bounded queue and one warning.
"""

from __future__ import annotations

import logging
import os
import threading
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import NoOpTracerProvider
from opentelemetry.trace import TracerProvider as ApiTracerProvider

from server.errors import ConfigError
from tracing.export_health import CountingBatchSpanProcessor, ExportHealth, HealthReportingExporter

log = logging.getLogger(__name__)

_FILE_KEYS = {
    "resource": {"service_name"},
    "traces": {"enabled", "endpoint", "protocol", "compression", "timeout_s", "batch"},
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
        if key not in ("resource", "traces"):
            raise ConfigError(f"{p}: unknown table [{key}]")
    traces = dict(data.get("traces", {}))
    batch = traces.pop("batch", {})
    for key in batch:
        if key not in _FILE_KEYS["traces.batch"]:
            raise ConfigError(f"{p}: unknown key traces.batch.{key}")
    values: dict[str, Any] = {**traces, **batch}
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
    cfg = TracingConfig(**{**cfg.as_dict(), **overrides})
    if cfg.protocol != "grpc":
        raise ConfigError(f"{p}: traces.protocol {cfg.protocol!r} is not supported (use 'grpc')")
    if cfg.compression not in ("gzip", "deflate", "none"):
        raise ConfigError(f"traces.compression {cfg.compression!r}: use gzip, deflate or none")
    return cfg


def make_resource(cfg: TracingConfig, node_name: str) -> Resource:
    # Resource.create also merges OTEL_RESOURCE_ATTRIBUTES.
    return Resource.create({"service.name": cfg.service_name, "service.instance.id": node_name})


def make_otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    from grpc import Compression

    from tracing.otlp_exporter import FastOTLPSpanExporter

    compression = {"gzip": Compression.Gzip, "deflate": Compression.Deflate,
                   "none": Compression.NoCompression}[cfg.compression]
    return FastOTLPSpanExporter(endpoint=cfg.endpoint, compression=compression, timeout=cfg.timeout_s)


class Telemetry:
    """What a running node holds of OpenTelemetry: its provider and how to stop it."""

    def __init__(self, provider: ApiTracerProvider, config: TracingConfig,
                 health: ExportHealth | None = None) -> None:
        self.provider = provider
        self.config = config
        self.health = health

    def shutdown(self, timeout_s: float) -> bool:
        """Flush and stop the exporter, waiting at most timeout_s; True if it finished.

        Runs on a helper thread because a dead collector makes the SDK's flush
        block for its own (longer) export timeout.
        """
        provider = self.provider
        if not isinstance(provider, TracerProvider):
            return True

        def stop() -> None:
            provider.force_flush(int(timeout_s * 1000))
            provider.shutdown()

        worker = threading.Thread(target=stop, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("span flush did not finish within %.1fs; unsent spans are dropped", timeout_s)
            return False
        return True


def configure_tracing(
    config_path: str | Path, node_name: str, *, exporter: SpanExporter | None = None,
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Build the node's tracer provider. `exporter` replaces OTLP (tests, benchmarks)."""
    cfg = load_tracing_config(config_path, environ)
    if not cfg.enabled:
        return Telemetry(NoOpTracerProvider(), cfg)
    health = ExportHealth(cfg.endpoint)
    provider = TracerProvider(resource=make_resource(cfg, node_name), shutdown_on_exit=False)
    inner = exporter if exporter is not None else make_otlp_exporter(cfg)
    provider.add_span_processor(CountingBatchSpanProcessor(
        HealthReportingExporter(inner, health), health,
        prepare=getattr(inner, "prepare", None),
        max_queue_size=cfg.max_queue_size,
        schedule_delay_millis=cfg.schedule_delay_ms,
        max_export_batch_size=cfg.max_export_batch_size,
        export_timeout_millis=cfg.export_timeout_ms,
    ))
    return Telemetry(provider, cfg, health)
