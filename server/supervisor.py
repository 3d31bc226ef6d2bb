"""Node processes on this machine, supervised: what `--cluster N` (server/local_cluster.py)
and `--workers N` (server/workers.py) share.

A plain-threads supervisor (it is not the server): each child is `python -m
server` with its settings in its environment; its output is forwarded line by
line, prefixed with its name (any cluster secret redacted); the supervisor waits,
with deadlines, for every child's listening line, and on the way out sends SIGTERM
to every child, waits `shutdown_timeout` + 5 s, then SIGKILLs (at once on a second
signal). Subclasses decide what the children are and how they are watched.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import IO

from server.announce import LISTENING
from server.ports import http_url
from server.settings import Settings, env_name

LISTEN_DEADLINE = 20.0   # every child printed its listening line
KILL_GRACE = 5.0         # added to shutdown_timeout before SIGKILL
POLL_INTERVAL = 0.2
HTTP_TIMEOUT = 2.0

# Settings the supervisor decides for each child, whatever the parent's environment says.
_CHILD_SETTINGS = ("bind", "node_name", "cluster_bind", "cluster_advertise", "peers", "cluster_secret",
                   "engine", "valkey_url", "workers")


@dataclass(frozen=True)
class NodePlan:
    """Where one local node serves and how the others reach it."""

    name: str
    bind: str             # HTTP HOST:PORT the node binds (or, for a worker, serves: the shared socket)
    http_host: str        # a host to dial (the bind host, or loopback for a wildcard bind)
    http_port: int
    cluster_bind: str     # cluster HOST:PORT the node binds ("" without cluster ports)
    cluster_address: str  # cluster HOST:PORT the others dial (advertised; "" without)

    @property
    def url(self) -> str:
        return http_url(self.http_host, self.http_port)


def quorum_overrides(count: int, settings: Settings) -> dict[str, int]:
    """replicas/write_quorum/read_quorum capped at the number of nodes (else a 1-node
    cluster could never reach a write quorum of 2). Empty when nothing needs capping."""
    replicas = min(settings.replicas, count)
    capped = {"replicas": replicas,
              "write_quorum": min(settings.write_quorum, replicas),
              "read_quorum": min(settings.read_quorum, replicas)}
    if all(getattr(settings, key) == value for key, value in capped.items()):
        return {}
    return capped


def child_environment(plan: NodePlan, plans: Sequence[NodePlan], secret: str, *,
                      base_env: Mapping[str, str], config_path: str | None = None,
                      extra: Mapping[str, int | str] | None = None, engine: str = "mesh",
                      more_peers: Sequence[str] = ()) -> dict[str, str]:
    """The environment of one child: the parent's, with its cluster settings decided here.
    The valkey engine gets no cluster address, peers or secret (its URL comes in extra).
    A child is always one node (`workers` = 1): only the supervisor runs several."""
    env = {k: v for k, v in base_env.items() if k not in {env_name(s) for s in _CHILD_SETTINGS}}
    env["PYTHONUNBUFFERED"] = "1"
    env[env_name("bind")] = plan.bind
    env[env_name("node_name")] = plan.name
    env[env_name("engine")] = engine
    env[env_name("workers")] = "1"
    if engine == "mesh":
        env[env_name("cluster_bind")] = plan.cluster_bind
        env[env_name("cluster_advertise")] = plan.cluster_address
        env[env_name("peers")] = ",".join([*(p.cluster_address for p in plans if p is not plan),
                                           *more_peers])
        env[env_name("cluster_secret")] = secret
    if config_path:
        env["WEBSERVER_CONFIG"] = os.path.abspath(config_path)
    for key, value in (extra or {}).items():
        env[env_name(key)] = str(value)
    return env


def fetch_nodes(host: str, port: int, timeout: float = HTTP_TIMEOUT) -> list[str] | None:
    """The node's `GET /nodes` list, or None if it does not answer properly (yet)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/nodes")
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            return None
        data = json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    nodes = data.get("nodes") if isinstance(data, dict) else None
    if isinstance(nodes, list) and all(isinstance(n, str) for n in nodes):
        return nodes
    return None


def describe_exit(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Output:
    """Line-at-a-time printing shared by the forwarding threads and the supervisor.

    The secret is redacted from everything forwarded, should a child ever print it."""

    def __init__(self, secret: str) -> None:
        self._lock = threading.Lock()
        self._secret = secret

    def line(self, text: str, *, stream: IO[str] | None = None) -> None:
        out = stream or sys.stdout
        text = text.replace(self._secret, "[redacted]")
        with self._lock:
            try:
                out.write(text + "\n")
                out.flush()
            except (OSError, ValueError):  # our stdout went away: keep draining the children
                pass

    def error(self, text: str) -> None:
        self.line(f"webserver: {text}", stream=sys.stderr)


@dataclass
class Child:
    plan: NodePlan
    process: subprocess.Popen[bytes]
    listening: threading.Event = field(default_factory=threading.Event)
    url: str = ""
    threads: list[threading.Thread] = field(default_factory=list)
    reported_exit: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


def _forward(child: Child, pipe: IO[bytes], stream: IO[str], output: Output) -> None:
    prefix = f"[{child.plan.name}]"
    for raw in iter(pipe.readline, b""):
        text = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not child.listening.is_set() and (match := LISTENING.search(text)):
            child.url = match.group(2)
            child.listening.set()
        output.line(f"{prefix} {text}", stream=stream)
    pipe.close()


class Stop(Exception):
    """A stop signal arrived while starting up."""


class Supervisor:
    """Signals, spawning, the wait for listening lines and the stop, for subclasses'
    `_run` (start, wait, then watch until a stop signal; the exit code)."""

    member = "node"           # what a child is called in messages
    group = "the cluster"     # what stopping them all is called

    def __init__(self, settings: Settings, *, secret: str, python: str = sys.executable,
                 base_env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.python = python
        self.base_env = dict(os.environ if base_env is None else base_env)
        self._secret = secret
        self.output = Output(secret)
        self.children: list[Child] = []
        self._threads: list[threading.Thread] = []  # of every child, restarted ones too
        self.stop_requested = threading.Event()
        self.signals_received = 0

    # -- signals -------------------------------------------------------------
    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs in the main thread between bytecodes: set flags only, print nothing.
        self.signals_received += 1
        self.stop_requested.set()

    def _wait(self, seconds: float) -> None:
        """Sleep, but return early on a stop signal; raise Stop if one arrived."""
        if self.stop_requested.wait(seconds):
            raise Stop

    def _died_while(self, during: str) -> bool:
        """Report a child that has stopped while `during` (True: one has; the caller
        stops them all)."""
        for child in self.children:
            if not child.alive:
                child.reported_exit = True
                self.output.error(f"{self.member} {child.plan.name} stopped while {during} "
                                  f"({describe_exit(child.process.returncode)}); stopping {self.group}")
                return True
        return False

    # -- the run -------------------------------------------------------------
    def run(self) -> int:
        handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            return self._run()
        finally:
            try:
                self._stop_children()
            finally:
                self._cleanup()
                for signum, handler in previous.items():
                    signal.signal(signum, handler)

    def _run(self) -> int:
        raise NotImplementedError

    def _cleanup(self) -> None:
        """After the children have stopped (a local Valkey server, shared sockets)."""

    def _spawn(self, plan: NodePlan, env: Mapping[str, str], *, args: Sequence[str] = (),
               pass_fds: Sequence[int] = ()) -> Child:
        process = subprocess.Popen(
            [self.python, "-m", "server", *args], env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(pass_fds))
        child = Child(plan, process)
        assert process.stdout is not None and process.stderr is not None
        for pipe, stream in ((process.stdout, sys.stdout), (process.stderr, sys.stderr)):
            thread = threading.Thread(target=_forward, args=(child, pipe, stream, self.output),
                                      name=f"forward-{plan.name}", daemon=True)
            thread.start()
            child.threads.append(thread)
            self._threads.append(thread)
        return child

    def _wait_listening(self) -> bool:
        deadline = time.monotonic() + LISTEN_DEADLINE
        while True:
            waiting = [c for c in self.children if not c.listening.is_set()]
            if not waiting:
                return True
            for child in waiting:
                if not child.alive:
                    child.listening.wait(0.5)  # its last lines may still be in the pipe
                    if not child.listening.is_set():
                        child.reported_exit = True
                        self.output.error(f"{self.member} {child.plan.name} stopped before it was "
                                          f"listening ({describe_exit(child.process.returncode)}; its "
                                          f"output is above); stopping {self.group}")
                        return False
            if time.monotonic() > deadline:
                names = ", ".join(c.plan.name for c in waiting)
                self.output.error(f"not listening within {LISTEN_DEADLINE:g}s: {names}; "
                                  f"stopping {self.group}")
                return False
            self._wait(POLL_INTERVAL)

    def _stop_children(self) -> None:
        """SIGTERM every child still running, wait shutdown_timeout + 5 s, then SIGKILL."""
        for child in self.children:
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_timeout + KILL_GRACE
        signals_at_start = self.signals_received
        while any(c.alive for c in self.children) and time.monotonic() < deadline:
            if self.signals_received > signals_at_start:
                break  # asked again while stopping: kill now
            time.sleep(POLL_INTERVAL)
        for child in self.children:
            if child.alive:
                self.output.error(f"{self.member} {child.plan.name} did not stop in time; killing it")
                child.process.kill()
            try:
                child.process.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                self.output.error(f"{self.member} {child.plan.name} (pid {child.process.pid}) "
                                  "survived SIGKILL")
        for thread in self._threads:
            thread.join(KILL_GRACE)
