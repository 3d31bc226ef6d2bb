"""The node's metrics: OpenTelemetry instruments, read two ways at once.

One reader (tracing/metrics_export.py, NodeMetricReader) on a registry of the
node's own serves `GET /metrics`; when telemetry export is on, the same reader
also pushes OTLP to the traces' endpoint from a thread of its own. Names follow the
stable HTTP semantic conventions where one exists, `webserver.*` otherwise;
Prometheus sees them with dots as underscores, the unit as a suffix and
`_total` on counters (`http_server_request_duration_seconds`,
`webserver_websocket_messages_total`).

The request and chat-broadcast duration histograms keep exemplars (trace and
span id of a sampled span current when the value was recorded) with the SDK's
default trace-based filter; they travel with OTLP (the text scrape format has
no exemplars). The other instruments keep none (tracing/exemplars.py says why).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from tracing.exemplars import exemplar_views
from tracing.export_health import ExportHealth

# The HTTP semantic conventions' advisory buckets for request durations, seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
RECIPIENT_BUCKETS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

Counts = Callable[[], Mapping[tuple[tuple[str, str], ...], float]]



@dataclass
class MetricsHandle:
    """What a node holds: the provider (to shut down) and the registry `/metrics` renders."""

    provider: MeterProvider
    registry: CollectorRegistry


def make_meter_provider(resource: Resource | None = None, *, push: MetricExporter | None = None,
                        push_interval_s: float = 30.0,
                        extra_readers: Iterable[MetricReader] = ()) -> MetricsHandle:
    """A provider whose reader serves a registry of its own and, given `push`, exports
    to it every `push_interval_s` (extra readers: an in-memory one in tests)."""
    from tracing.metrics_export import NodeMetricReader

    registry = CollectorRegistry()
    readers: list[MetricReader] = [NodeMetricReader(registry, push, push_interval_s), *extra_readers]
    provider = SdkMeterProvider(metric_readers=readers, resource=resource or Resource.create({}),
                                shutdown_on_exit=False, views=exemplar_views())
    return MetricsHandle(provider, registry)


class LiveCount:
    """A count per attribute set that goes up and down (`add`), observed at collection."""

    def __init__(self) -> None:
        self._counts: dict[tuple[tuple[str, Any], ...], int] = {}

    def add(self, amount: int, attributes: Mapping[str, Any]) -> None:
        key = tuple(attributes.items())
        self._counts[key] = self._counts.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(key)) for key, value in list(self._counts.items())]


class Metrics:
    """Every instrument the node records into; cheap to call on hot paths."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.http_duration = meter.create_histogram(
            "http.server.request.duration", unit="s", description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        # Up-down counts kept in plain dicts and read at collection (asynchronous
        # up-down counters): an SDK instrument call costs ~7-14 µs, twice per request.
        self.http_active = LiveCount()
        self.ws_connections = LiveCount()
        meter.create_observable_up_down_counter(
            "http.server.active_requests", [self.http_active.observe], unit="{request}",
            description="Number of active HTTP server requests.")
        meter.create_observable_up_down_counter(
            "webserver.websocket.connections", [self.ws_connections.observe], unit="{connection}",
            description="Open WebSocket connections.")
        self.ws_messages = meter.create_counter(
            "webserver.websocket.messages", unit="{message}",
            description="WebSocket messages, by direction (in, out) and type.")
        self.chat_duration = meter.create_histogram(
            "webserver.chat.broadcast.duration", unit="s", description="Time to fan one chat message out.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.chat_recipients = meter.create_histogram(
            "webserver.chat.recipients", unit="{recipient}", description="Members one chat message reached.",
            explicit_bucket_boundaries_advisory=list(RECIPIENT_BUCKETS))
        self.chat_dropped = meter.create_counter(
            "webserver.chat.dropped", unit="{message}",
            description="Messages dropped for slow consumers (their queue was full).")
        self.kv_duration = meter.create_histogram(
            "webserver.kv.operation.duration", unit="s",
            description="KV operations by operation and outcome "
                        "(ok, not_found, quorum_failure, store_full, error).",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS))
        self.link_messages = meter.create_counter(
            "webserver.cluster.link.messages", unit="{message}",
            description="Messages on peer links, by direction and message type.")
        self.link_reconnects = meter.create_counter(
            "webserver.cluster.link.reconnects", unit="{link}",
            description="Peer links established again after one to the same peer ended.")

    def observe(self, name: str, unit: str, description: str, counts: Counts, *,
                counter: bool = False) -> None:
        """An asynchronous gauge (or monotonic counter) read from `counts` at collection."""
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, dict(attrs)) for attrs, value in counts().items()]

        if counter:
            self.meter.create_observable_counter(name, [callback], unit=unit, description=description)
        else:
            self.meter.create_observable_gauge(name, [callback], unit=unit, description=description)


def observe_export_health(metrics: Metrics, health: ExportHealth) -> None:
    """The span exporter's queue and counters as metrics (read at each collection)."""
    metrics.observe("webserver.otel.export.queue_size", "{span}", "Spans waiting for the exporter.",
                    lambda: {(): float(health.queue_size())})
    for name, key, unit, description in (
            ("webserver.otel.spans.exported", "exported", "{span}", "Spans the collector accepted."),
            ("webserver.otel.spans.dropped", "dropped", "{span}", "Spans dropped on a full export queue."),
            ("webserver.otel.export.failures", "failed_exports", "{export}", "Failed span export batches.")):
        metrics.observe(name, unit, description, partial(_one_count, health, key), counter=True)


def _one_count(health: ExportHealth, key: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {(): float(health.counts()[key])}
