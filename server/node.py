"""A node: the chat hub, the KV store, the cluster mesh and the HTTP/WebSocket
server of one process.

`serve_node` is the one place that wires them into a nursery: the node's
services start with `nursery.start`, Hypercorn's trio worker serves the ASGI
app on a socket we bind ourselves (so port 0 works and the node can be named
after the port it really got), and `RunningNode.stop()` shuts it down in order:
stop accepting, close WebSockets with 1001, let Hypercorn drain, stop services.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
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
                       bus=self.engine.chat)
        if isinstance(self.engine, MeshEngine):
            self.engine.serve_trace_lookups(self._on_traces_get)
        self.started_at = time.monotonic()
        self.shutting_down = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The node's long-lived services; returns only when cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.hub.run_broadcaster)
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


def bind_socket(settings: Settings) -> socket.socket:
    """The listening socket. TCP_USER_TIMEOUT is inherited by accepted sockets, so the
    kernel cuts a peer that stops reading for good: Hypercorn shields its socket
    send, so nothing in user space could interrupt a send stuck on a zero window."""
    host, port = settings.host, settings.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.tcp_user_timeout and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                        int(settings.tcp_user_timeout * 1000))
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {settings.bind}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    # Hypercorn's own cap is a backstop; we check the real limit and say why in the close.
    config.websocket_max_message_size = settings.ws_max_message_size * 4
    config.graceful_timeout = settings.shutdown_timeout
    config.websocket_ping_interval = settings.ws_ping_interval or None
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    return config


@dataclass
class RunningNode:
    node: Node
    url: str
    _stop: trio.Event

    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("shutting down %s", self.node.name)
            self._stop.set()
            self.node.begin_shutdown()


# Given the node's name; a Telemetry also gives /debug/telemetry its figures.
ProviderFactory = Callable[[str], "trace.TracerProvider | Telemetry"]


async def serve_node(settings: Settings, tracer_provider: trace.TracerProvider | ProviderFactory, *,
                     transport: Transport | None = None, metrics: MetricsHandle | None = None,
                     task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one node until `RunningNode.stop()`; started() hands back the running node.

    `tracer_provider` may be a factory taking the node's name, for a resource
    whose service.instance.id is the name given to the port actually bound.
    """
    from server.app import create_asgi

    sock = bind_socket(settings)
    host, port = sock.getsockname()[:2]
    name = settings.node_name or default_node_name(host, port)
    made = tracer_provider if isinstance(tracer_provider, trace.TracerProvider) else tracer_provider(name)
    telemetry = made if isinstance(made, Telemetry) else None
    provider = made.provider if isinstance(made, Telemetry) else made
    if metrics is None and telemetry is not None:
        metrics = telemetry.metrics
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    node = Node(settings, name=name, tracer_provider=provider, http_url=settings.advertise_url or url,
                transport=transport, metrics=metrics, telemetry=telemetry)
    config = hypercorn_config(settings)
    config.bind = [f"fd://{sock.fileno()}"]
    stop = trio.Event()
    try:
        async with trio.open_nursery() as services:
            await services.start(node.run)
            async with trio.open_nursery() as http:
                await http.start(partial(hypercorn_serve, create_asgi(node), config,  # type: ignore[arg-type]
                                         shutdown_trigger=stop.wait))
                task_status.started(RunningNode(node, url, stop))
            services.cancel_scope.cancel()
    finally:
        # Hypercorn made its own socket object on this fd and closes it; closing
        # ours too could close an fd number already reused by someone else.
        sock.detach()
