"""tracing/otel_env.py: the one reader of OTEL_*, its checks, and what setup takes from it."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracing import setup as tracing_setup
from tracing.errors import TelemetryConfigError
from tracing.export_health import (
    ExportHealth,
    ExportWatch,
    HealthReportingExporter,
    HealthReportingLogExporter,
)
from tracing.otel_env import OtelEnv, parse_headers, read_otel_env
from tracing.sampling import RuleBasedSampler, build_sampler, rules_sampler_factory
from tracing.sdk_compat import SDK_EXPORTER_LOGGER, LogRecordExporter, LogRecordExportResult
from tracing.setup import configure_tracing, load_tracing_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("env", "variable"), [
    ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED"),
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER"),
    ({"OTEL_LOGS_EXPORTER": "console"}, "OTEL_LOGS_EXPORTER"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
      "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http"}, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION"),
    ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
    ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS"),
    ({"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, "OTEL_EXPORTER_OTLP_INSECURE"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "a=1,b"}, "OTEL_RESOURCE_ATTRIBUTES"),
    ({"OTEL_BSP_MAX_QUEUE_SIZE": "many"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
    ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY"),
    ({"OTEL_METRIC_EXPORT_INTERVAL": "1.5"}, "OTEL_METRIC_EXPORT_INTERVAL"),
    ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
])
def test_an_invalid_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(TelemetryConfigError, match=variable):
        read_otel_env(env)


def test_per_signal_settings_win_over_the_general_ones() -> None:
    otel = read_otel_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://all:4317",
                          "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4317",
                          "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
                          "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "deflate",
                          "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret",
                          "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert (otel.traces.endpoint, otel.logs.endpoint) == ("http://all:4317", "http://logs:4317")
    assert (otel.traces.compression, otel.metrics.compression) == ("none", "deflate")
    assert otel.traces.headers == otel.metrics.headers == "api-key=s3cret"
    assert otel.logs.protocol == "grpc"


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    conf = tmp_path / "otel.toml"
    conf.write_text('[traces]\nendpoint = "http://file:4317"\ncompression = "gzip"\n'
                    '[traces.batch]\nmax_queue_size = 100\nmax_export_batch_size = 50\n')
    cfg = load_tracing_config(conf, environ={"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:4317",
                                             "OTEL_BSP_MAX_QUEUE_SIZE": "4000",
                                             "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
                                             "OTEL_SERVICE_NAME": "svc"})
    assert (cfg.endpoint, cfg.compression, cfg.max_queue_size) == ("http://env:4317", "gzip", 4000)
    assert cfg.service_name == "svc" and cfg.otel.resource_attributes == {"deployment.environment": "test"}
    resource = tracing_setup.make_resource(cfg, "n1")
    assert resource.attributes["deployment.environment"] == "test"
    assert resource.attributes["service.instance.id"] == "n1"
    assert load_tracing_config(conf, environ={}).endpoint == "http://file:4317"


def test_setup_never_sets_the_global_providers_unless_asked(tmp_path: Path) -> None:
    telemetry = configure_tracing(tmp_path / "none.toml", "n1", exporter=InMemorySpanExporter(),
                                  environ={"OTEL_METRICS_EXPORTER": "none"})
    try:
        assert trace.get_tracer_provider() is not telemetry.provider
    finally:
        telemetry.shutdown(5)


def test_the_global_providers_are_set_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing_setup, "_global_providers", ["first-node"])
    # Already set: a second node keeps its own providers (and the global one is untouched).
    assert tracing_setup.set_global_providers(object(), "second") is False  # type: ignore[arg-type]


def test_the_sampler_entry_point(tmp_path: Path) -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    target = data["project"]["entry-points"]["opentelemetry_traces_sampler"]["webserver_rules"]
    assert target == "tracing.sampling:rules_sampler_factory"
    conf = tmp_path / "o.toml"
    conf.write_text('[traces.sampler]\ndefault_ratio = 0.5\n'
                    '[[traces.sampler.rules]]\npath = "/health"\nratio = 0.0\n')
    sampler = rules_sampler_factory(str(conf))
    assert isinstance(sampler, RuleBasedSampler) and sampler.default_ratio == 0.5
    assert sampler.root_ratio("GET", {"url.path": "/health"}) == 0.0
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        rules_sampler_factory(str(tmp_path / "missing.toml"))
    cfg = load_tracing_config(conf, environ={"OTEL_TRACES_SAMPLER": "webserver_rules"})
    assert isinstance(build_sampler(cfg.sampler), RuleBasedSampler)


def test_one_watch_warns_once_with_the_sdks_reason_then_recovers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    watch = ExportWatch("http://c:4317", problem="down {endpoint} ({reason})", recovery="up {endpoint}")
    sdk = logging.getLogger(SDK_EXPORTER_LOGGER)

    def failing() -> str:
        sdk.warning("Transient error UNAVAILABLE, retrying")
        sdk.warning("Shutdown in progress, aborting retry.")
        return "FAILURE"

    assert watch.call(failing, "SUCCESS", 3) is False
    assert watch.call(failing, "SUCCESS", 3) is False
    assert watch.call(lambda: "SUCCESS", "SUCCESS", 2) is True
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert messages == ["down http://c:4317 (Transient error UNAVAILABLE, retrying)", "up http://c:4317"]
    assert (watch.failed_exports, watch.failed_items, watch.exported) == (2, 6, 2)
    sdk.warning("outside an export")  # not held back
    assert caplog.records[-1].getMessage() == "outside an export"


class _FailingLogs(LogRecordExporter):
    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        raise RuntimeError("boom")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def test_log_export_is_watched_too(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tracing.export")
    exporter = HealthReportingLogExporter(_FailingLogs(), "http://c:4317")
    assert exporter.export([]) is LogRecordExportResult.FAILURE
    assert exporter.watch.failing and "RuntimeError('boom')" in (exporter.watch.last_error or "")
    assert any("cannot export logs" in r.getMessage() for r in caplog.records)


# -- OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf ----------------------------------------

def test_the_protocol_is_general_or_per_signal() -> None:
    otel = read_otel_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "HTTP/protobuf",
                          "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc"})
    assert (otel.traces.protocol, otel.metrics.protocol, otel.logs.protocol) == (
        "http/protobuf", "http/protobuf", "grpc")
    otel = read_otel_env({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
    assert (otel.traces.protocol, otel.metrics.protocol, otel.logs.protocol) == (None, "http/protobuf", None)


def test_an_unsupported_protocol_is_refused_naming_its_variable() -> None:
    with pytest.raises(TelemetryConfigError, match=r"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL 'http/json': "
                                                   r"use grpc or http/protobuf"):
        read_otel_env({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"})


@pytest.mark.parametrize(("env", "expected"), [
    # No endpoint: the specification's default, with the signal's path.
    ({}, ("http://localhost:4318/v1/traces", "http://localhost:4318/v1/metrics",
          "http://localhost:4318/v1/logs")),
    # The general endpoint is a base URL: each signal's path is appended (one slash).
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"},
     ("http://c:4318/v1/traces", "http://c:4318/v1/metrics", "http://c:4318/v1/logs")),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318/otlp/"},
     ("https://c:4318/otlp/v1/traces", "https://c:4318/otlp/v1/metrics", "https://c:4318/otlp/v1/logs")),
    # A per-signal endpoint is used as it is, whatever its path (none, or another).
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318",
      "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://l:9/ingest/logs"},
     ("http://t:4318", "http://c:4318/v1/metrics", "http://l:9/ingest/logs")),
])
def test_the_http_endpoint_follows_the_specification(env: dict[str, str],
                                                     expected: tuple[str, str, str]) -> None:
    otel = read_otel_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", **env})
    assert (otel.traces.http_endpoint, otel.metrics.http_endpoint, otel.logs.http_endpoint) == expected
    # The gRPC endpoint is what it always was (the per-signal variable, else the general one).
    assert otel.traces.endpoint == env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                                           env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    unread = OtelEnv()  # the defaults, without the environment
    assert unread.metrics.http_endpoint == "http://localhost:4318/v1/metrics"


def test_headers_parse_into_a_dict() -> None:
    assert parse_headers(None) is None
    assert parse_headers("Api-Key=s3cret, x-tenant=a%20b") == {"api-key": "s3cret", "x-tenant": "a b"}


def test_http_protobuf_builds_the_sdks_http_exporters(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from tracing.metrics_export import make_otlp_metric_exporter

    conf = tmp_path / "otel.toml"
    conf.write_text('[traces]\nendpoint = "http://file:4317"\n')
    cfg = load_tracing_config(conf, environ={
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret", "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
        "OTEL_EXPORTER_OTLP_METRICS_COMPRESSION": "none"})
    # The traces' URL (shown by /debug/telemetry and in the export warning) is the HTTP one.
    assert (cfg.protocol, cfg.endpoint, cfg.compression) == (
        "http/protobuf", "http://c:4318/v1/traces", "gzip")
    spans = tracing_setup.make_otlp_exporter(cfg)
    assert isinstance(spans, OTLPSpanExporter)
    assert (spans._endpoint, spans._compression.value, spans._client._timeout) == (
        "http://c:4318/v1/traces", Compression.Gzip.value, 3.0)
    assert spans._client._headers["api-key"] == "s3cret"
    assert spans._client._headers["Content-Encoding"] == "gzip"
    logs = tracing_setup.make_otlp_log_exporter(cfg)
    assert isinstance(logs, OTLPLogExporter) and logs._endpoint == "http://c:4318/v1/logs"

    protocol, endpoint, compression, timeout_s = tracing_setup._signal_settings(cfg, cfg.otel.metrics,
                                                                                "metrics")
    assert (protocol, endpoint, compression, timeout_s) == ("http/protobuf", "http://c:4318/v1/metrics",
                                                            "none", 3.0)
    quiet = make_otlp_metric_exporter(endpoint=endpoint, compression=compression, timeout_s=timeout_s,
                                      headers=cfg.otel.metrics.headers, protocol=protocol)
    assert isinstance(quiet.inner, OTLPMetricExporter) and quiet.endpoint == "http://c:4318/v1/metrics"
    assert "Content-Encoding" not in quiet.inner._client._headers
    for exporter in (spans, logs, quiet):
        exporter.shutdown()


def test_a_per_signal_protocol_changes_that_signal_only(tmp_path: Path) -> None:
    from tracing.otlp_exporter import FastOTLPSpanExporter

    conf = tmp_path / "otel.toml"
    conf.write_text('[traces]\nendpoint = "http://file:4317"\n')
    cfg = load_tracing_config(conf, environ={"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"})
    assert (cfg.protocol, cfg.endpoint) == ("grpc", "http://file:4317")
    assert tracing_setup._signal_settings(cfg, cfg.otel.metrics, "metrics")[:2] == (
        "http/protobuf", "http://localhost:4318/v1/metrics")
    assert tracing_setup._signal_settings(cfg, cfg.otel.logs, "logs")[:2] == ("grpc", "http://file:4317")
    exporter = tracing_setup.make_otlp_exporter(cfg)
    assert isinstance(exporter, FastOTLPSpanExporter)
    exporter.shutdown()
    # Traces over HTTP: a signal left on gRPC does not follow them to their HTTP URL.
    cfg = load_tracing_config(conf, environ={"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"})
    assert cfg.endpoint == "http://localhost:4318/v1/traces"
    assert tracing_setup._signal_settings(cfg, cfg.otel.logs, "logs")[:2] == ("grpc", "http://localhost:4317")


def test_a_dead_http_collector_costs_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    """The SDK's OTLP/HTTP exporter logs each failed attempt from its own logger: the
    watch holds those back, as for gRPC, and reports the first failure once."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

    from server.ports import free_port
    from tracing.sdk_compat import stop_retrying

    caplog.set_level(logging.DEBUG)
    endpoint = f"http://127.0.0.1:{free_port()}/v1/traces"
    inner = OTLPSpanExporter(endpoint=endpoint, timeout=1)
    exporter = HealthReportingExporter(inner, ExportHealth(endpoint))
    span = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("s")
    span.end()
    assert isinstance(span, ReadableSpan)
    stop_retrying(inner)  # one attempt per export
    for _ in range(3):
        assert exporter.export([span]) is not SpanExportResult.SUCCESS
    exporter.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot export spans" in warnings[0], warnings
    assert endpoint in warnings[0]
    assert exporter.health.failed_exports == 3
