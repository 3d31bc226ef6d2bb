"""`hypercorn -k trio 'server.asgi:app'`: the node as a plain ASGI application.

Settings come from conf/webserver.toml and WEBSERVER_* (Hypercorn's own flags
choose the socket; set WEBSERVER_NODE_NAME to name the node after it). The
node's services start from the ASGI lifespan, in Quart-Trio's lifespan nursery.
"""

from __future__ import annotations

import logging
import os

import trio

from server.app import create_app, create_asgi
from server.logs import setup_logging
from server.node import Node, default_node_name
from server.runtime import tune_gc
from server.settings import load_settings
from tracing.setup import configure_tracing

log = logging.getLogger("server.asgi")

settings = load_settings()
setup_logging(settings.log_level, telemetry_config=settings.telemetry_config, node=settings.node_name)
_name = settings.node_name or default_node_name(settings.host, settings.port)
telemetry = configure_tracing(settings.telemetry_config, _name)
_host = f"[{settings.host}]" if ":" in settings.host else settings.host
node = Node(settings, name=_name, tracer_provider=telemetry.provider,
            http_url=settings.advertise_url or f"http://{_host}:{settings.port}", telemetry=telemetry,
            metrics=telemetry.metrics)
_quart = create_app(node)
_services = trio.CancelScope()


@_quart.before_serving
async def _start_node() -> None:
    async def run_services() -> None:
        with _services:
            await node.run()

    _quart.nursery.start_soon(run_services)
    tune_gc(settings.gc_thresholds)
    log.info("node %s started (pid %d)", node.name, os.getpid())


@_quart.after_serving
async def _stop_node() -> None:
    node.begin_shutdown()
    _services.cancel()
    await trio.to_thread.run_sync(telemetry.shutdown, settings.shutdown_timeout)


app = create_asgi(node, _quart)
