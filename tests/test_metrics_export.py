"""The node's one metric reader: scraped for GET /metrics and pushed over OTLP from
the same aggregation, with exemplars on the request histogram only."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from opentelemetry.sdk.metrics import Histogram
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tracing.exemplars import EXEMPLAR_HISTOGRAMS, PLAIN_HISTOGRAMS
from tracing.metrics import Metrics, make_meter_provider


class CollectingExporter(MetricExporter):
    """An OTLP stand-in that keeps what it is given (the push thread's side)."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed: list[MetricsData] = []
        self.pushed_event = threading.Event()
        self.shut_down = False

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
               ) -> MetricExportResult:
        self.pushed.append(metrics_data)
        self.pushed_event.set()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.shut_down = True


def histogram_points(data: MetricsData, name: str) -> list[Any]:
    return [p for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for p in m.data.data_points]


def scraped_counts(registry: Any, family: str) -> list[float]:
    text = generate_latest(registry).decode()
    return [s.value for f in text_string_to_metric_families(text) if f.name == family
            for s in f.samples if s.name == f"{family}_count"]


def test_push_and_scrape_share_one_aggregation_and_exemplars_stay_on_requests() -> None:
    exporter = CollectingExporter()
    handle = make_meter_provider(push=exporter, push_interval_s=0.05)
    metrics = Metrics(handle.provider.get_meter("test"))
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("test")
    with tracer.start_as_current_span("GET /kv/{key}") as span:
        for _ in range(3):
            metrics.http_duration.record(0.002, {"http.request.method": "GET"})
            metrics.kv_duration.record(0.001, {"kv.operation": "get", "kv.outcome": "ok"})
    trace_id = span.get_span_context().trace_id

    # A scrape while the push thread runs: each figure once, counted once.
    assert scraped_counts(handle.registry, "http_server_request_duration_seconds") == [3.0]
    assert scraped_counts(handle.registry, "webserver_kv_operation_duration_seconds") == [3.0]

    exporter.pushed_event.clear()
    assert exporter.pushed_event.wait(5), "the push thread exports on its interval"
    pushed = exporter.pushed[-1]
    (request,) = histogram_points(pushed, "http.server.request.duration")
    (kv,) = histogram_points(pushed, "webserver.kv.operation.duration")
    assert request.count == 3 and kv.count == 3  # cumulative, as the scrape saw it
    assert {e.trace_id for e in request.exemplars} == {trace_id}
    assert kv.exemplars == []
    # The scrape after pushes still sees the same single series.
    assert scraped_counts(handle.registry, "http_server_request_duration_seconds") == [3.0]

    pushes = len(exporter.pushed)
    started = time.monotonic()
    handle.provider.shutdown(timeout_millis=5_000)  # type: ignore[attr-defined]
    assert time.monotonic() - started < 5
    assert len(exporter.pushed) > pushes, "shutdown pushes the last figures"
    assert exporter.shut_down


def test_without_push_there_is_no_push_thread() -> None:
    before = {t.name for t in threading.enumerate()}
    handle = make_meter_provider()
    metrics = Metrics(handle.provider.get_meter("test"))
    metrics.http_duration.record(0.002, {"http.request.method": "GET"})
    assert "OtelMetricPush" not in {t.name for t in threading.enumerate()} - before
    assert scraped_counts(handle.registry, "http_server_request_duration_seconds") == [1.0]
    handle.provider.shutdown()  # type: ignore[attr-defined]


def test_every_histogram_has_its_exemplar_policy() -> None:
    metrics = Metrics(make_meter_provider().provider.get_meter("test"))
    names = {h.name for h in vars(metrics).values() if isinstance(h, Histogram)}
    assert names == set(EXEMPLAR_HISTOGRAMS) | set(PLAIN_HISTOGRAMS)


def test_a_dead_collector_costs_one_warning_even_with_tracing_off(caplog: Any) -> None:
    """The SDK exporter logs every retry; with tracing off no span filter hides them."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from server.ports import free_port
    from tracing.metrics_export import QuietMetricExporter

    caplog.set_level(logging.DEBUG)
    endpoint = f"http://127.0.0.1:{free_port()}"
    quiet = QuietMetricExporter(OTLPMetricExporter(endpoint=endpoint, timeout=1), endpoint)
    reader = InMemoryMetricReader()
    handle = make_meter_provider(extra_readers=[reader])
    Metrics(handle.provider.get_meter("test")).http_duration.record(0.1, {"http.request.method": "GET"})
    data = reader.get_metrics_data()
    assert data is not None
    for _ in range(2):
        assert quiet.export(data, timeout_millis=1000) is not MetricExportResult.SUCCESS
    quiet.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "cannot push metrics" in warnings[0], warnings
