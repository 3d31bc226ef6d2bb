"""`python -m server` / `webserver`: run one node until SIGINT or SIGTERM
(or, with `--cluster N`, N local nodes meshed together: server/local_cluster.py;
with `--workers N`, N processes serving one port as one cluster: server/workers.py).

`--http-fd FD` and `--cluster-fd FD` are the `--workers` supervisor's, not for people:
a worker serves HTTP on the inherited listening socket FD, and its mesh listens on
the other."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from functools import partial

import trio

from server.announce import listening_line
from server.cluster.transport import BoundTcpTransport, Transport
from server.errors import ConfigError
from server.local_cluster import (
    CLUSTER_PORT_OFFSET,
    MAX_NODES,
    MIN_NODES,
    check_node_count,
    run_local_cluster,
)
from server.local_valkey import DEFAULT_VALKEY_PORT, VALKEY_HOST, check_cluster_engine
from server.logs import setup_logging
from server.runtime import tune_gc
from server.serve import serve_node
from server.settings import MAX_WORKERS, Settings, env_name, load_settings
from server.workers import run_workers
from tracing.errors import TelemetryConfigError
from tracing.setup import Telemetry, configure_tracing, load_tracing_config


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="webserver", description="Run one webserver node.")
    p.add_argument("--config", help="settings file (default conf/webserver.toml; env WEBSERVER_CONFIG)")
    p.add_argument("--bind", help=f"HOST:PORT to serve on (env {env_name('bind')})")
    p.add_argument("--node-name", help=f"node name (env {env_name('node_name')})")
    p.add_argument("--cluster-bind", metavar="HOST:PORT",
                   help=f"listen for peer nodes here (env {env_name('cluster_bind')})")
    p.add_argument("--peers", metavar="HOST:PORT,...",
                   help=f"cluster addresses of peers to dial (env {env_name('peers')})")
    p.add_argument("--cluster", type=int, metavar="N",
                   help=f"run N ({MIN_NODES}-{MAX_NODES}) local nodes meshed together, with a fresh "
                        "secret; HTTP ports from --bind's port, cluster ports at HTTP port + "
                        f"{CLUSTER_PORT_OFFSET}")
    p.add_argument("--workers", type=int, metavar="N",
                   help=f"serve --bind from N (1-{MAX_WORKERS}) processes, each a cluster member: the "
                        "mesh (on loopback unless configured) or valkey engine "
                        f"(env {env_name('workers')})")
    p.add_argument("--engine", metavar="ENGINE",
                   help=f"where shared state lives: memory, mesh or valkey (env {env_name('engine')}); "
                        "with --cluster: mesh (default) or valkey")
    p.add_argument("--valkey-url", metavar="URL",
                   help=f"the Valkey server, redis://HOST:PORT[/DB] (env {env_name('valkey_url')}); "
                        "with --cluster --engine valkey: use this server instead of starting one")
    p.add_argument("--valkey-port", type=int, metavar="PORT",
                   help="with --cluster --engine valkey: start a local Valkey server on "
                        f"{VALKEY_HOST}:PORT (default {DEFAULT_VALKEY_PORT}, which must be free; "
                        "0 = a free port, data in a temporary directory)")
    # The --workers supervisor's, for its workers: inherited listening sockets.
    p.add_argument("--http-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("--cluster-fd", type=int, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# A wildcard bind is served on every interface; people open it on loopback.
_BROWSABLE_HOSTS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}


def startup_urls(url: str) -> str:
    """The lines after the listening line: where people point a client or a browser."""
    scheme, _, address = url.partition("://")
    host, _, port = address.rpartition(":")
    base = f"{scheme}://{_BROWSABLE_HOSTS.get(host, host)}:{port}"
    return "\n".join([f"  API:           {base}/  (OpenAPI document: {base}/api/openapi)",
                      f"  chat:          {base}/chat",
                      f"  trace viewer:  {base}/debug/traces"])


async def run(settings: Settings, http_sock: socket.socket | None = None,
              transport: Transport | None = None) -> None:
    log = logging.getLogger("server")
    # Signals are caught from the start so an early SIGTERM still exits cleanly.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        telemetries: list[Telemetry] = []

        def make_telemetry(node_name: str) -> Telemetry:
            # The process's global providers too: third-party instrumentations join the node's pipeline.
            telemetries.append(configure_tracing(settings.telemetry_config, node_name, set_global=True))
            return telemetries[-1]

        try:
            async with trio.open_nursery() as nursery:
                running = await nursery.start(partial(serve_node, settings, make_telemetry,
                                                      sock=http_sock, transport=transport))
                tune_gc(settings.gc_thresholds)
                log.info("node %s serving on %s", running.node.name, running.url)
                # The first line is parsed (tests, the local-cluster supervisor): keep it as it is.
                print(listening_line(running.node.name, running.url), flush=True)
                print(startup_urls(running.url), flush=True)
                async for signum in signals:
                    log.info("received %s", signal.Signals(signum).name)
                    running.stop()
                    break
        finally:
            for telemetry in telemetries:
                await trio.to_thread.run_sync(telemetry.shutdown, settings.shutdown_timeout)


def run_cluster(args: argparse.Namespace) -> int:
    """`--cluster N`: the supervisor decides each node's name, cluster address and peers,
    and the engine (--engine, mesh by default; the environment's and file's are not used)."""
    try:
        check_node_count(args.cluster)
        for flag, value in (("--node-name", args.node_name), ("--cluster-bind", args.cluster_bind),
                            ("--peers", args.peers), ("--workers", args.workers)):
            if value is not None:
                raise ConfigError(f"{flag}: not with --cluster (each local node gets its own)")
        engine = args.engine or "mesh"
        check_cluster_engine(engine, valkey_url=args.valkey_url, valkey_port=args.valkey_port)
        # Validate everything else the nodes will load; the cluster settings are the supervisor's.
        overrides = {"bind": args.bind, "node_name": "", "cluster_bind": "", "cluster_advertise": "",
                     "peers": "", "engine": ""}
        if engine == "valkey":
            local = f"redis://{VALKEY_HOST}:{args.valkey_port or DEFAULT_VALKEY_PORT}/0"
            overrides |= ({"engine": "valkey", "valkey_url": args.valkey_url} if args.valkey_url
                          else {"engine": "valkey", "valkey_url": local, "valkey_mode": "standalone"})
        settings = load_settings(config_path=args.config, overrides=overrides)
        load_tracing_config(settings.telemetry_config)
        return run_local_cluster(args.cluster, settings, config_path=args.config, engine=engine,
                                 valkey_url=args.valkey_url, valkey_port=args.valkey_port)
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"webserver: configuration error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.cluster is not None:
        return run_cluster(args)
    try:
        if args.valkey_port is not None:
            raise ConfigError("--valkey-port: only with --cluster --engine valkey (it starts a local "
                              "server); a single node dials --valkey-url")
        settings = load_settings(config_path=args.config,
                                 overrides={"bind": args.bind, "node_name": args.node_name,
                                            "cluster_bind": args.cluster_bind, "peers": args.peers,
                                            "engine": args.engine, "valkey_url": args.valkey_url,
                                            "workers": args.workers})
        load_tracing_config(settings.telemetry_config)  # fail before serving, not during
        if settings.workers > 1 and args.http_fd is None:
            return run_workers(settings.workers, settings, config_path=args.config)
    except (ConfigError, TelemetryConfigError) as exc:
        print(f"webserver: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken
        print(f"webserver: {exc}", file=sys.stderr)
        return 1
    setup_logging(settings.log_level, telemetry_config=settings.telemetry_config, node=settings.node_name)
    # A worker of --workers: the supervisor's sockets, already listening.
    http_sock = socket.socket(fileno=args.http_fd) if args.http_fd is not None else None
    transport = (BoundTcpTransport(socket.socket(fileno=args.cluster_fd))
                 if args.cluster_fd is not None else None)
    failed = False
    try:
        trio.run(run, settings, http_sock, transport)
    except* OSError as group:  # e.g. the port is taken
        for error in group.exceptions:
            print(f"webserver: {error}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
