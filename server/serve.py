"""Serving a node: the socket, Hypercorn's trio worker, and the order of shutdown.

`serve_node` is the one place that wires a node into a nursery: the node's
services start with `nursery.start`, Hypercorn's trio worker serves the ASGI
app on a socket we bind ourselves (so port 0 works and the node can be named
after the port it really got), and `RunningNode.stop()` shuts it down in order:
stop accepting, close WebSockets with 1001, let Hypercorn drain, stop services.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from opentelemetry import trace

from server.app import create_asgi
from server.cluster.transport import Transport
from server.node import Node, default_node_name
from server.ports import http_url
from server.settings import Settings
from tracing.metrics import MetricsHandle
from tracing.setup import Telemetry

log = logging.getLogger(__name__)


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
    # The node pings its WebSockets itself (Hub.run_pinger): one task, not one per connection.
    config.websocket_ping_interval = None
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
                     sock: socket.socket | None = None,
                     transport: Transport | None = None, metrics: MetricsHandle | None = None,
                     task_status: trio.TaskStatus[RunningNode] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one node until `RunningNode.stop()`; started() hands back the running node.

    `tracer_provider` may be a factory taking the node's name, for a resource
    whose service.instance.id is the name given to the port actually bound.
    `sock`: a socket bound already (a `--workers` worker's, shared), else one bound here.
    """
    sock = sock or bind_socket(settings)
    host, port = sock.getsockname()[:2]
    name = settings.node_name or default_node_name(host, port)
    made = tracer_provider if isinstance(tracer_provider, trace.TracerProvider) else tracer_provider(name)
    telemetry = made if isinstance(made, Telemetry) else None
    provider = made.provider if isinstance(made, Telemetry) else made
    if metrics is None and telemetry is not None:
        metrics = telemetry.metrics
    url = http_url(host, port)
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
