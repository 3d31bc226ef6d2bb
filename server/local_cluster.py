"""`python -m server --cluster N [--engine mesh|valkey]`: N nodes on this machine
sharing state, for trying the cluster.

A small supervisor (plain threads and subprocesses: it is not the server). With
the mesh engine (the default) it

* generates a fresh cluster secret (`secrets.token_hex(32)`) that lives only in
  the children's environment: it is never printed or logged;
* gives node i the HTTP port `bind port + i` and the cluster port `HTTP port + 100`
  (4000/4100, 4001/4101, ... by default; `--bind HOST:0` picks free ports);
* starts N `python -m server` children, each dialing all the others, and forwards
  their output line by line, prefixed with the node's name;
* waits until every node is listening and every node's `GET /nodes` lists all N,
  then prints one `node NAME http=URL cluster=ADDR` line per node and
  `cluster of N nodes ready; Ctrl-C stops it`;
* on SIGINT/SIGTERM/SIGHUP sends SIGTERM to every node, waits `shutdown_timeout`
  + 5 s (then SIGKILL) and exits 0. A node that dies meanwhile is reported and the
  others keep running (you are probably testing failure); if all die, exit 1.

With `--engine valkey` the nodes share no link, no cluster port and no secret:
each talks to one Valkey server. Unless `--valkey-url` names an existing server,
the supervisor first starts a local one (server/engine/valkey_process.py) on
127.0.0.1:`--valkey-port` (6379 by default; it must be free), with AOF on, its
data in `test-output/valkey-PORT/` under the current directory (ignored by git,
wiped by `make clean`; a restart on the same port finds the data again), or, for
`--valkey-port 0`, on a free port in a temporary directory removed on stop. It
prints `valkey server at redis://127.0.0.1:PORT (AOF in DIR)`, then the nodes
(`node NAME http=URL`) once every node's `GET /nodes` lists all N, and on a stop
signal stops the nodes, then the Valkey server (SIGTERM: it flushes its AOF).
The engine is the supervisor's choice, like the cluster settings: the nodes'
WEBSERVER_ENGINE and WEBSERVER_VALKEY_URL come from the flags, not the
environment or the config file.
"""

from __future__ import annotations

import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from server.engine.valkey_process import ValkeyNotFound, ValkeyProcess, find_server_binary, start_valkey
from server.errors import ConfigError
from server.local_valkey import (
    DEFAULT_VALKEY_PORT,
    check_cluster_engine,
    check_valkey_port_free,
    redact_url,
    valkey_data_dir,
)
from server.ports import free_ports, host_port
from server.settings import Settings
from server.supervisor import (
    POLL_INTERVAL,
    NodePlan,
    Stop,
    Supervisor,
    child_environment,
    describe_exit,
    fetch_nodes,
    quorum_overrides,
)

MIN_NODES = 1
MAX_NODES = 9
CLUSTER_PORT_OFFSET = 100
MESH_DEADLINE = 15.0     # every node's /nodes lists all N

_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def check_node_count(count: int) -> None:
    if not MIN_NODES <= count <= MAX_NODES:
        raise ConfigError(f"--cluster: expected {MIN_NODES} to {MAX_NODES} nodes, got {count}")


def plan_nodes(count: int, settings: Settings, *, cluster_ports: bool = True) -> list[NodePlan]:
    """Ports and names of count nodes: bind port + i and + 100, or free ports for port 0.
    Without cluster_ports (the valkey engine: nodes share no link) only the HTTP ports."""
    check_node_count(count)
    host, port = settings.host, settings.port
    dial_host = _WILDCARD_HOSTS.get(host, host)
    per_node = 2 if cluster_ports else 1
    if port == 0:
        try:
            ports = free_ports(host, per_node * count)
        except OSError as exc:
            raise ConfigError(f"bind: cannot find free ports on {host!r}: {exc.strerror}") from None
        pairs: list[tuple[int, int | None]] = (
            list(zip(ports[:count], ports[count:], strict=True)) if cluster_ports
            else [(http, None) for http in ports])
    else:
        last = port + count - 1 + (CLUSTER_PORT_OFFSET if cluster_ports else 0)
        if last > 65535:
            what = f" and their cluster ports (+{CLUSTER_PORT_OFFSET})" if cluster_ports else ""
            raise ConfigError(f"bind: port {port} leaves no room for {count} HTTP ports{what}; "
                              f"the last would be {last}")
        pairs = [(port + i, port + i + CLUSTER_PORT_OFFSET if cluster_ports else None)
                 for i in range(count)]
    return [NodePlan(name=f"webserver@{host}:{http}", bind=host_port(host, http), http_host=dial_host,
                     http_port=http, cluster_bind=host_port(host, cluster) if cluster else "",
                     cluster_address=host_port(dial_host, cluster) if cluster else "")
            for http, cluster in pairs]


class LocalCluster(Supervisor):
    def __init__(self, count: int, settings: Settings, *, config_path: str | None = None,
                 python: str = sys.executable, base_env: Mapping[str, str] | None = None,
                 engine: str = "mesh", valkey_url: str | None = None,
                 valkey_port: int | None = None) -> None:
        check_cluster_engine(engine, valkey_url=valkey_url, valkey_port=valkey_port)
        super().__init__(settings, secret=secrets.token_hex(32), python=python, base_env=base_env)
        self.count = count
        self.config_path = config_path
        self.engine = engine
        self.plans = plan_nodes(count, settings, cluster_ports=engine == "mesh")
        # -- valkey engine: the server given, or one started here on valkey_port
        self.valkey_url = valkey_url
        self.valkey_port = DEFAULT_VALKEY_PORT if valkey_port is None else valkey_port
        self.valkey: ValkeyProcess | None = None
        self._valkey_binary = ""
        self._valkey_temp_dir: Path | None = None
        self._valkey_reported_exit = False
        if engine == "valkey" and valkey_url is None:
            if self.valkey_port:
                check_valkey_port_free(self.valkey_port)
            try:
                self._valkey_binary = find_server_binary()
            except ValkeyNotFound as exc:
                raise ConfigError(f"--engine valkey: cannot start a local Valkey server: {exc}; "
                                  "or give an existing server with --valkey-url") from None

    # -- the run -------------------------------------------------------------
    def _cleanup(self) -> None:
        self._stop_valkey()

    def _run(self) -> int:
        extra: dict[str, int | str] = {}
        if self.engine == "mesh" and (capped := quorum_overrides(self.count, self.settings)):
            self.output.line("note: " + ", ".join(f"{k}={v}" for k, v in capped.items())
                             + f" (capped at {self.count} node{'s' if self.count > 1 else ''})")
            extra.update(capped)
        try:
            if self.engine == "valkey":
                if self.valkey_url is None:
                    if not self._start_valkey():
                        return 1
                    extra.update(valkey_url=self._local_valkey_url(), valkey_mode="standalone")
                else:
                    self.output.line(f"valkey server at {redact_url(self.valkey_url)} "
                                     "(given by --valkey-url; not started here)")
                    extra.update(valkey_url=self.valkey_url)
                if self.stop_requested.is_set():
                    raise Stop
            self._spawn_all(extra)
            if not self._wait_listening():
                return 1
            if not self._wait_meshed():
                return 1
        except Stop:
            self.output.line("stopping the cluster (interrupted while starting)")
            return 0
        for child in self.children:
            cluster = f" cluster={child.plan.cluster_address}" if child.plan.cluster_address else ""
            self.output.line(f"node {child.plan.name} http={child.plan.url}{cluster}")
        self.output.line(f"cluster of {self.count} nodes ready; Ctrl-C stops it")
        return self._supervise()

    # -- the local Valkey server (valkey engine without --valkey-url) ---------------
    def _local_valkey_url(self) -> str:
        assert self.valkey is not None
        return f"{self.valkey.url}/0"

    def _start_valkey(self) -> bool:
        """Start the local server (AOF on) and say where; False (reported) if it would not."""
        workdir = valkey_data_dir(self.valkey_port)
        try:
            if workdir is None:
                workdir = self._valkey_temp_dir = Path(tempfile.mkdtemp(prefix="webserver-valkey-"))
            else:
                workdir.mkdir(parents=True, exist_ok=True)
            self.valkey = start_valkey(port=self.valkey_port, appendonly=True, workdir=workdir,
                                       binary=self._valkey_binary)
        except (OSError, RuntimeError) as exc:
            self.output.error(f"the local Valkey server did not start ({self._valkey_binary}, port "
                              f"{self.valkey_port or 'free'}, directory {workdir}): {exc}")
            return False
        temporary = ", a temporary directory removed on stop" if self._valkey_temp_dir else ""
        self.output.line(f"valkey server at {self.valkey.url} (AOF in {self.valkey.workdir}{temporary})")
        return True

    def _check_valkey(self) -> None:
        """Say once if the local server died: the nodes answer 503 for KV from then on."""
        proc = self.valkey.proc if self.valkey is not None else None
        if proc is not None and proc.poll() is not None and not self._valkey_reported_exit:
            self._valkey_reported_exit = True
            self.output.error(f"the valkey server stopped unexpectedly ({describe_exit(proc.returncode)}; "
                              f"its log: {self.valkey.workdir / 'server.log' if self.valkey else ''}); "
                              "the nodes answer 503 for KV")

    def _stop_valkey(self) -> None:
        """After the nodes: SIGTERM (the server flushes its AOF), SIGKILL past 10 s."""
        if self.valkey is not None:
            if self.valkey.proc is not None and self.valkey.proc.poll() is None:
                self.output.line("stopping the valkey server")
            self.valkey.stop()
        if self._valkey_temp_dir is not None:
            shutil.rmtree(self._valkey_temp_dir, ignore_errors=True)

    def _spawn_all(self, extra: Mapping[str, int | str]) -> None:
        for plan in self.plans:
            env = child_environment(plan, self.plans, self._secret, base_env=self.base_env,
                                    config_path=self.config_path, extra=extra, engine=self.engine)
            self.children.append(self._spawn(plan, env))

    def _wait_meshed(self) -> bool:
        expected = {c.plan.name for c in self.children}
        deadline = time.monotonic() + MESH_DEADLINE
        seen: dict[str, list[str] | None] = {}
        while True:
            if self._died_while("the cluster formed"):
                return False
            for child in self.children:
                seen[child.plan.name] = fetch_nodes(child.plan.http_host, child.plan.http_port)
            # Valkey may still list nodes of an earlier run (until their heartbeat key
            # expires) or of other clusters sharing a --valkey-url: all N present is enough.
            if all(nodes is not None and (expected <= set(nodes) if self.engine == "valkey"
                                          else set(nodes) == expected)
                   for nodes in seen.values()):
                return True
            if time.monotonic() > deadline:
                views = "; ".join(f"{name} sees {nodes if nodes is not None else 'no answer'}"
                                  for name, nodes in seen.items())
                self.output.error(f"the nodes did not all see each other within {MESH_DEADLINE:g}s "
                                  f"({views}); stopping the cluster")
                return False
            self._wait(POLL_INTERVAL)

    def _supervise(self) -> int:
        while not self.stop_requested.wait(POLL_INTERVAL):
            self._check_valkey()
            for child in self.children:
                if not child.alive and not child.reported_exit:
                    child.reported_exit = True
                    left = sum(c.alive for c in self.children)
                    self.output.error(f"node {child.plan.name} stopped unexpectedly "
                                      f"({describe_exit(child.process.returncode)}); "
                                      f"{left} of {self.count} still running")
            if not any(c.alive for c in self.children):
                self.output.error("every node has exited; stopping")
                return 1
        self.output.line(f"stopping {sum(c.alive for c in self.children)} node(s)")
        return 0


def run_local_cluster(count: int, settings: Settings, *, config_path: str | None = None,
                      python: str = sys.executable, engine: str = "mesh",
                      valkey_url: str | None = None, valkey_port: int | None = None) -> int:
    """Run count local nodes until a stop signal; the exit code (0, or 1 if the cluster
    (or its local Valkey server) could not start or every node died). Raises ConfigError
    for a bad count, engine, ports, or no Valkey server binary."""
    return LocalCluster(count, settings, config_path=config_path, python=python, engine=engine,
                        valkey_url=valkey_url, valkey_port=valkey_port).run()
