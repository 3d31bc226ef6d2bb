"""A node: the chat hub, the engine (KV, chat between nodes, membership) and the
telemetry of one process, and the services they run. Serving it over HTTP is
server/serve.py's."""

from __future__ import annotations

import logging
import random
import time

import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider

from server.chat.connection import CLOSE_GOING_AWAY
from server.chat.hub import Hub
from server.cluster.mesh import Mesh
from server.cluster.transport import Transport
from server.engine.base import Engine
from server.engine.choose import make_engine
from server.engine.mesh import MeshEngine
from server.kv.store import Store
from server.settings import Settings
from tracing.lean import tracer_for
from tracing.metrics import Metrics, MetricsHandle, make_meter_provider, observe_export_health
from tracing.setup import Telemetry
from tracing.span_buffer import SpanBuffer, peer_reply

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, *, name: str, tracer_provider: trace.TracerProvider,
                 http_url: str = "", transport: Transport | None = None,
                 rng: random.Random | None = None, metrics: MetricsHandle | None = None,
                 telemetry: Telemetry | None = None) -> None:
        self.settings = settings
        self.name = name
        self.http_url = http_url
        self.tracer = tracer_for(tracer_provider, "webserver")
        # Recent finished spans for /debug/traces: only an SDK provider has processors.
        self.span_buffer: SpanBuffer | None = None
        if settings.trace_buffer_spans and isinstance(tracer_provider, SdkTracerProvider):
            self.span_buffer = SpanBuffer(settings.trace_buffer_spans, node=name)
            tracer_provider.add_span_processor(self.span_buffer)
        # Metrics always have at least the Prometheus reader behind GET /metrics.
        self.metrics_handle = metrics or make_meter_provider()
        self.metrics = Metrics(self.metrics_handle.provider.get_meter("webserver"))
        self.telemetry = telemetry
        if telemetry is not None and telemetry.health is not None:
            observe_export_health(self.metrics, telemetry.health)
        # Where KV, chat between nodes and membership live (server/engine/).
        self.engine: Engine = make_engine(settings, name=name, http_url=http_url, tracer=self.tracer,
                                          metrics=self.metrics, transport=transport, rng=rng)
        self.kv = self.engine.kv
        self.hub = Hub(node_name=name, tracer=self.tracer, history_size=settings.history_size,
                       max_rooms=settings.max_rooms,
                       max_rooms_per_connection=settings.max_rooms_per_connection,
                       queue_size=settings.broadcast_queue_size,
                       publish_timeout=settings.slow_consumer_timeout, metrics=self.metrics,
                       bus=self.engine.chat, ping_interval=settings.ws_ping_interval)
        if isinstance(self.engine, MeshEngine):
            self.engine.serve_trace_lookups(self._on_traces_get)
        self.started_at = time.monotonic()
        self.shutting_down = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node's long-lived services; returns only when cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.hub.run_broadcaster)
            await nursery.start(self.hub.run_pinger)
            await nursery.start(self.engine.run)
            task_status.started()

    @property
    def mesh(self) -> Mesh | None:
        """The cluster mesh of the `mesh` engine (None on any other engine)."""
        return self.engine.mesh if isinstance(self.engine, MeshEngine) else None

    @property
    def store(self) -> Store:
        """This process's KV state (the memory and mesh engines)."""
        store = getattr(self.engine, "store", None)
        if not isinstance(store, Store):
            raise AttributeError(f"the {self.engine.kind} engine keeps no local store")
        return store

    def set_http_url(self, url: str) -> None:
        """This node's URL, learnt after it started (the Hypercorn CLI: the first request)."""
        self.http_url = url
        self.engine.advertise(url)

    def live_members(self) -> list[str]:
        """This node first, then every other node it sees alive."""
        return self.engine.live_members()

    def describe_members(self) -> list[dict[str, object]]:
        return self.engine.describe_members()

    def _on_traces_get(self, body: dict[str, object]) -> dict[str, object]:
        # Half the frame limit: the reply's envelope and the asker's limit stay clear.
        return peer_reply(self.span_buffer, self.name, body, self.settings.cluster_max_message_bytes // 2)

    def begin_shutdown(self) -> None:
        self.shutting_down = True
        self.hub.close_all(CLOSE_GOING_AWAY, "server shutting down")


def default_node_name(host: str, port: int) -> str:
    return f"webserver@{host}:{port}"
