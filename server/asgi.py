"""`hypercorn -k trio 'server.asgi:app'`: the node as a plain ASGI application.

Settings come from conf/webserver.toml and WEBSERVER_*; Hypercorn's own flags
choose the socket. The node's services start from the ASGI lifespan, in
Quart-Trio's lifespan nursery.

The node is named after the socket it serves. Hypercorn's config is not
visible to the app, but the Hypercorn CLI binds its sockets before it imports
this module, so the one TCP socket this process listens on at import is the
served one (`listening_addresses`). When there is none (`hypercorn.trio.serve`
binds after the lifespan) or several (`--bind` given twice), the name falls
back to `settings.bind`, a loud warning says so, and the node's `http_url` is
taken from the first request's `scope["server"]`. `WEBSERVER_NODE_NAME` and
`WEBSERVER_ADVERTISE_URL` override both.

`hypercorn --workers N` with `WEBSERVER_WORKERS=N`: each worker claims its place
among N at import (`claim_worker`, server/worker_plan.py): a cluster port of a known
range, which makes it worker I, named NAME-wI, a member of one cluster with the others.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import TYPE_CHECKING

import trio

from server.app import create_app, create_asgi
from server.cluster.transport import BoundTcpTransport
from server.errors import ConfigError
from server.logs import setup_logging
from server.node import Node, default_node_name
from server.ports import http_url
from server.runtime import tune_gc
from server.settings import load_settings
from server.worker_plan import claim_worker
from tracing.setup import configure_tracing

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

log = logging.getLogger("server.asgi")


def listening_addresses() -> list[tuple[str, int]]:
    """(host, port) of every TCP socket of this process that is bound and not connected
    (a listener, or about to be one), from its file descriptors; [] where they cannot be listed."""
    for fd_dir in ("/proc/self/fd", "/dev/fd"):
        try:
            fds = sorted(int(name) for name in os.listdir(fd_dir) if name.isdigit())
            break
        except OSError:
            continue
    else:
        return []
    found: list[tuple[str, int]] = []
    for fd in fds:
        try:
            dup = os.dup(fd)  # a socket object of our own; closing it leaves the original open
        except OSError:
            continue  # closed meanwhile (e.g. the directory listing's own fd)
        try:
            sock = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)  # not a socket
            continue
        with sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                continue
            try:
                sock.getpeername()
                continue  # connected: a client socket
            except OSError:
                pass
            host, port = sock.getsockname()[:2]
            if port and (host, port) not in found:
                found.append((host, port))
    return found


settings = load_settings()
# Before any socket of ours is opened: the worker's claim is not the served socket.
_listening = listening_addresses()
_served = _listening[0] if len(_listening) == 1 else None
_host, _port = _served or (settings.host, settings.port)
_workers = settings.workers
try:
    _worker = claim_worker(settings, _host, _port) if _workers > 1 else None
except ConfigError as exc:  # one line, as `python -m server` says it, not a traceback per worker
    print(f"webserver: configuration error: {exc}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
if _worker is not None:
    settings = _worker.settings
setup_logging(settings.log_level, telemetry_config=settings.telemetry_config, node=settings.node_name)
if _worker is not None and _worker.note:
    log.info("%s", _worker.note)
_name = settings.node_name or default_node_name(_host, _port)
_url_known = bool(settings.advertise_url) or _served is not None
telemetry = configure_tracing(settings.telemetry_config, _name, set_global=True)
node = Node(settings, name=_name, tracer_provider=telemetry.provider,
            http_url=settings.advertise_url or http_url(_host, _port), telemetry=telemetry,
            metrics=telemetry.metrics,
            transport=BoundTcpTransport(_worker.claim) if _worker and _worker.cluster_socket else None)
if _served is None and not (settings.node_name and settings.advertise_url):
    # Loud: under the Hypercorn CLI a wrong name splits the cluster's view of this node.
    log.warning(
        "cannot tell which socket Hypercorn serves (TCP sockets listening at startup: %s)%s%s",
        ", ".join(f"{h}:{p}" for h, p in _listening) or "none",
        "" if settings.node_name else
        f"; the node is named {_name!r} after settings.bind {settings.bind!r}, which Hypercorn does "
        "not use, and cannot be renamed once started: set WEBSERVER_NODE_NAME to match --bind",
        "" if settings.advertise_url else
        "; its http_url is taken from the first request (or set WEBSERVER_ADVERTISE_URL)")
_quart = create_app(node)
_services = trio.CancelScope()


@_quart.before_serving
async def _start_node() -> None:
    async def run_services() -> None:
        with _services:
            await node.run()

    _quart.nursery.start_soon(run_services)
    tune_gc(settings.gc_thresholds)
    log.info("node %s started (pid %d%s), http_url %s", node.name, os.getpid(),
             f", worker {_worker.index} of {_workers}" if _worker else "",
             node.http_url if _url_known else "(from the first request)")


@_quart.after_serving
async def _stop_node() -> None:
    node.begin_shutdown()
    _services.cancel()
    await trio.to_thread.run_sync(telemetry.shutdown, settings.shutdown_timeout)


_asgi = create_asgi(node, _quart)


async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    global _url_known
    if not _url_known and scope["type"] != "lifespan":
        server = scope.get("server")
        if server and server[1] is not None:
            _url_known = True
            node.set_http_url(http_url(server[0], server[1]))
            log.info("http_url %s (from the first request's local address)", node.http_url)
    await _asgi(scope, receive, send)


app.quart = _quart  # type: ignore[attr-defined]
