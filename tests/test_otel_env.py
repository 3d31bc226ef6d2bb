"""tracing/otel_env.py: the one reader of OTEL_*, its checks, and what setup takes from it."""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tracing import setup as tracing_setup
from tracing.errors import TelemetryConfigError
from tracing.export_health import ExportWatch, HealthReportingLogExporter
from tracing.otel_env import read_otel_env
from tracing.sampling import RuleBasedSampler, build_sampler, rules_sampler_factory
from tracing.sdk_compat import SDK_EXPORTER_LOGGER, LogRecordExporter, LogRecordExportResult
from tracing.setup import configure_tracing, load_tracing_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("env", "variable"), [
    ({"OTEL_SDK_DISABLED": "yes"}, "OTEL_SDK_DISABLED"),
    ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_METRICS_EXPORTER": "prometheus"}, "OTEL_METRICS_EXPORTER"),
    ({"OTEL_LOGS_EXPORTER": "console"}, "OTEL_LOGS_EXPORTER"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "http/protobuf"}, "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
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
