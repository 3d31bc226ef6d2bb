"""`python -m server --workers N`: N processes serving one HTTP port, each a cluster
member (server/worker_plan.py), under a small supervisor.

- The supervisor binds the HTTP socket once (with `bind`'s address, port 0 too) and
  listens on it; every worker serves that one socket, inherited (`--http-fd`), as the
  Hypercorn CLI does with its workers. Why not SO_REUSEPORT: one accept queue means a
  dying or restarting worker loses no queued connection and a busy worker takes fewer
  new ones, the port is bound once and held while workers come and go, and port 0 works.
  The kernel still picks the worker of each connection.
- Mesh: the supervisor binds each worker's cluster port too (free loopback ports, or
  `cluster_bind`'s port + I - 1) and hands it over the same way (`--cluster-fd`), with a
  fresh secret unless `cluster_secret` is set. Valkey: every worker dials `valkey_url`.
- It waits for every worker's listening line, then until a `GET /nodes` on the shared
  port lists all N (the mesh is connected; gossip does the rest), and prints
  `worker NAME pid=PID ...` lines and `N workers serving URL; Ctrl-C stops them`.
- A worker that dies is reported and restarted with the same name and sockets; more
  than MAX_RESTARTS restarts within RESTART_WINDOW seconds stop them all (exit 1), as
  does a worker that dies before it first listens (a configuration problem).
- SIGINT/SIGTERM/SIGHUP: SIGTERM to every worker, SIGKILL past `shutdown_timeout` + 5 s.
"""

from __future__ import annotations

import secrets
import socket
import sys
import time
from collections.abc import Mapping

from hypercorn.config import Config as HypercornConfig

from server.errors import ConfigError
from server.ports import host_port, http_url, listening_socket
from server.serve import bind_socket
from server.settings import Settings
from server.supervisor import (
    POLL_INTERVAL,
    Child,
    NodePlan,
    Stop,
    Supervisor,
    child_environment,
    describe_exit,
    fetch_nodes,
    quorum_overrides,
)
from server.worker_plan import advertised, cluster_range, worker_name, workers_engine

READY_DEADLINE = 15.0   # after listening: a /nodes answer on the shared port lists all N
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
READY_LINE = "{count} workers serving {url}; Ctrl-C stops them"

_WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class WorkerPool(Supervisor):
    member = "worker"
    group = "the workers"

    def __init__(self, count: int, settings: Settings, *, config_path: str | None = None,
                 python: str = sys.executable, base_env: Mapping[str, str] | None = None) -> None:
        self.engine = workers_engine(settings)  # ConfigError for an explicit memory engine
        super().__init__(settings, secret=settings.cluster_secret or secrets.token_hex(32),
                         python=python, base_env=base_env)
        self.count = count
        self.config_path = config_path
        self.sockets: list[socket.socket] = []
        self._restarts: list[float] = []
        self.plans: list[NodePlan] = []
        self._fds: dict[str, tuple[int, ...]] = {}
        self._extra: dict[str, int | str] = {}
        try:
            self._bind()
        except BaseException:
            self._cleanup()
            raise

    def _bind(self) -> None:
        """The shared HTTP socket and, for the mesh, each worker's cluster socket; OSError
        (e.g. the port is taken) names the address."""
        s = self.settings
        http = bind_socket(s)
        self.sockets.append(http)
        http.listen(HypercornConfig().backlog)  # connections queue until a worker accepts
        host, port = http.getsockname()[:2]
        dial_host = _WILDCARD_HOSTS.get(host, host)
        cluster_host, base = cluster_range(s, self.engine, None)
        if self.engine.kind == "mesh" and base and base + self.count - 1 > 65535:
            raise ConfigError(f"cluster_bind: ports {base}..{base + self.count - 1} do not fit below 65536")
        for i in range(self.count):
            fds: tuple[int, ...] = (http.fileno(),)
            cluster_bind = cluster_address = ""
            if self.engine.kind == "mesh":
                wanted = base + i if base else 0
                try:
                    sock = listening_socket(cluster_host, wanted)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot bind cluster port {host_port(cluster_host, wanted)}: "
                                             f"{exc.strerror}") from None
                self.sockets.append(sock)
                fds += (sock.fileno(),)
                cluster_bind = host_port(cluster_host, sock.getsockname()[1])
                cluster_address = advertised(s, cluster_bind, i)
            plan = NodePlan(name=worker_name(s, host, port, i + 1), bind=host_port(host, port),
                            http_host=dial_host, http_port=port, cluster_bind=cluster_bind,
                            cluster_address=cluster_address)
            self.plans.append(plan)
            self._fds[plan.name] = fds

    @property
    def url(self) -> str:
        return http_url(self.plans[0].http_host, self.plans[0].http_port)

    def _cleanup(self) -> None:
        for sock in self.sockets:
            sock.close()

    # -- the run -------------------------------------------------------------
    def _run(self) -> int:
        extra = self._extra
        if self.engine.auto:
            self.output.line(f"note: {self.engine.note(self.count)}")
        if self.engine.kind == "mesh" and not self.settings.peer_addresses:
            if capped := quorum_overrides(self.count, self.settings):
                self.output.line("note: " + ", ".join(f"{k}={v}" for k, v in capped.items())
                                 + f" (capped at {self.count} workers)")
                extra.update(capped)
        if self.engine.kind == "valkey":
            extra["valkey_url"] = self.settings.valkey_url
        try:
            self.children = [self._start(plan) for plan in self.plans]
            if not self._wait_listening() or not self._wait_ready():
                return 1
        except Stop:
            self.output.line("stopping the workers (interrupted while starting)")
            return 0
        for child in self.children:
            cluster = f" cluster={child.plan.cluster_address}" if child.plan.cluster_address else ""
            self.output.line(f"worker {child.plan.name} pid={child.process.pid}{cluster}")
        self.output.line(READY_LINE.format(count=self.count, url=self.url))
        return self._supervise()

    def _start(self, plan: NodePlan) -> Child:
        env = child_environment(plan, self.plans, self._secret, base_env=self.base_env,
                                config_path=self.config_path, extra=self._extra,
                                engine=self.engine.kind, more_peers=self.settings.peer_addresses)
        fds = self._fds[plan.name]
        args = ["--http-fd", str(fds[0])] + (["--cluster-fd", str(fds[1])] if len(fds) > 1 else [])
        return self._spawn(plan, env, args=args, pass_fds=fds)

    def _wait_ready(self) -> bool:
        """Until one answer on the shared port lists every worker (valkey: at least them;
        it may still list nodes of an earlier run until their heartbeat keys expire)."""
        expected = {p.name for p in self.plans}
        plan = self.plans[0]
        deadline = time.monotonic() + READY_DEADLINE
        last: list[str] | None = None
        while True:
            if self._died_while("the workers formed a cluster"):
                return False
            last = fetch_nodes(plan.http_host, plan.http_port) or last
            if last is not None and (expected <= set(last) if self.engine.kind == "valkey"
                                     else set(last) == expected):
                return True
            if time.monotonic() > deadline:
                self.output.error(f"the workers did not all see each other within {READY_DEADLINE:g}s "
                                  f"(last answer: {last}); stopping the workers")
                return False
            self._wait(POLL_INTERVAL)

    def _supervise(self) -> int:
        while not self.stop_requested.wait(POLL_INTERVAL):
            for i, child in enumerate(self.children):
                if child.alive or self.stop_requested.is_set():
                    continue
                now = time.monotonic()
                self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW] + [now]
                what = (f"worker {child.plan.name} stopped unexpectedly "
                        f"({describe_exit(child.process.returncode)})")
                if len(self._restarts) > MAX_RESTARTS:
                    self.output.error(f"{what}; more than {MAX_RESTARTS} restarts within "
                                      f"{RESTART_WINDOW:g}s: stopping the workers")
                    return 1
                self.children[i] = self._start(child.plan)
                self.output.error(f"{what}; restarted it (pid {self.children[i].process.pid})")
        self.output.line(f"stopping {sum(c.alive for c in self.children)} worker(s)")
        return 0


def run_workers(count: int, settings: Settings, *, config_path: str | None = None,
                python: str = sys.executable) -> int:
    """Run count workers on settings.bind until a stop signal; the exit code (0, or 1 if
    they could not start or kept dying). Raises ConfigError (the engine) or OSError (a
    socket that cannot be bound)."""
    return WorkerPool(count, settings, config_path=config_path, python=python).run()
