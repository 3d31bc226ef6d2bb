"""Workers as cluster members: N processes serving one HTTP port, each a node of one
cluster, so KV and chat are the same whichever worker the kernel hands a connection.

Shared by `python -m server --workers N` (server/workers.py: the supervisor binds the
sockets and knows each worker's index) and the Hypercorn CLI's workers
(`claim_worker`, called by server/asgi.py at import: Hypercorn gives no index, so a
worker claims the first free port of a known range and is named after its place in it).

- Engine. mesh and valkey are used as configured. The memory engine keeps one
  process's state, so: left unset (the default), N workers use the mesh on loopback
  instead, and say so; set explicitly, it is a configuration error.
- Names. `NAME-wI` (I = 1..N), NAME being `node_name` or `webserver@HOST:PORT` of the
  HTTP socket: distinct per worker, and stable across restarts.
- Mesh. Worker I listens on cluster port BASE + I - 1 and seeds every other worker (and
  any `peers`); `cluster_advertise`, if set, is offset the same way. Without
  `cluster_bind`, `--workers` binds free loopback ports and the Hypercorn CLI uses
  127.0.0.1 from the HTTP port + 100. Quorums are capped at N unless `peers` names
  nodes outside the workers.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from dataclasses import dataclass

from server.errors import ConfigError
from server.node import default_node_name
from server.ports import host_port, listening_socket
from server.settings import Settings, env_name
from server.supervisor import quorum_overrides

log = logging.getLogger(__name__)

AUTO_MESH_HOST = "127.0.0.1"
CLUSTER_PORT_OFFSET = 100  # as `--cluster N`: cluster ports from the HTTP port + 100


@dataclass(frozen=True)
class WorkersEngine:
    kind: str   # "mesh" or "valkey"
    auto: bool  # the memory engine by default, replaced by a loopback mesh

    def note(self, count: int) -> str:
        return (f"the memory engine keeps one process's state, so the {count} workers use "
                f"the mesh engine on {AUTO_MESH_HOST} (set engine = \"mesh\" or \"valkey\" to "
                "choose)") if self.auto else ""


def workers_engine(settings: Settings) -> WorkersEngine:
    """The engine of several workers; ConfigError for an explicit memory engine."""
    kind = settings.engine_kind
    if kind != "memory":
        return WorkersEngine(kind, auto=False)
    if settings.engine == "memory":
        raise ConfigError("engine: \"memory\" keeps one process's state, so each of several workers "
                          "would have its own KV and rooms; with workers > 1 use mesh or valkey "
                          "(or leave engine unset: a mesh on loopback)")
    return WorkersEngine("mesh", auto=True)


def worker_name(settings: Settings, host: str, port: int, index: int) -> str:
    return f"{settings.node_name or default_node_name(host, port)}-w{index}"


def cluster_range(settings: Settings, engine: WorkersEngine, http_port: int | None) -> tuple[str, int]:
    """(host, first port) of the workers' cluster ports; port 0: any free port each.
    http_port None: the supervisor (which binds free ports); else the Hypercorn CLI's,
    where the valkey engine uses the same range only to number its workers."""
    if engine.kind == "mesh" and not engine.auto:
        host, _, port = settings.cluster_bind.rpartition(":")
        return host.strip("[]"), int(port)
    if http_port is None:
        return AUTO_MESH_HOST, 0
    return AUTO_MESH_HOST, http_port + CLUSTER_PORT_OFFSET


def advertised(settings: Settings, bound: str, offset: int) -> str:
    """What worker (offset + 1) advertises: cluster_advertise moved by offset, else bound."""
    if not settings.cluster_advertise:
        return bound
    host, _, port = settings.cluster_advertise.rpartition(":")
    return f"{host}:{int(port) + offset}" if int(port) else bound


def worker_settings(settings: Settings, count: int, *, name: str, cluster_bind: str = "",
                    cluster_advertise: str = "", peers: list[str] | None = None,
                    engine: WorkersEngine) -> Settings:
    """One worker's settings: its name, one node (`workers` = 1), its cluster address
    and the others' as peers (mesh), quorums capped at the workers (no outside peers)."""
    changes: dict[str, object] = {"node_name": name, "workers": 1, "engine": engine.kind}
    if engine.kind == "mesh":
        changes.update(cluster_bind=cluster_bind, cluster_advertise=cluster_advertise,
                       peers=",".join([*(peers or []), *settings.peer_addresses]))
        if not settings.peer_addresses:
            changes.update(quorum_overrides(count, settings))
    return dataclasses.replace(settings, **changes).validate()  # type: ignore[arg-type]


# -- the Hypercorn CLI: a worker claims its place at import --------------------------

@dataclass
class ClaimedWorker:
    index: int
    settings: Settings     # this worker's: name, cluster address, peers
    claim: socket.socket   # the port claimed, held for the process's life
    note: str = ""         # a line to log (the engine chosen for it)

    @property
    def cluster_socket(self) -> socket.socket | None:
        """The mesh's listening socket (None on the valkey engine: the claim is a lock)."""
        return self.claim if self.settings.engine_kind == "mesh" else None


def _claim(host: str, port: int, *, mesh: bool) -> socket.socket:
    """The mesh's cluster port, listening. Otherwise a port only bound, without
    SO_REUSEADDR: a lock no sibling can also bind, and that refuses every connection."""
    if mesh:
        return listening_socket(host, port)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def claim_worker(settings: Settings, http_host: str, http_port: int) -> ClaimedWorker:
    """Under `hypercorn --workers N` with `workers = N`: this worker's place among N.

    It binds the first free port of the cluster range (the mesh: listening at once,
    so a sibling racing for it fails and moves on); its place in the range numbers the
    worker. On the valkey engine the port is only that number's lock. ConfigError when
    every port is taken (more Hypercorn workers than `workers`?) or the mesh has no secret.
    """
    count = settings.workers
    engine = workers_engine(settings)
    mesh = engine.kind == "mesh"
    host, base = cluster_range(settings, engine, http_port)
    if base == 0:
        raise ConfigError("cluster_bind: under the Hypercorn CLI with workers > 1 give a port: each "
                          "worker claims one of PORT .. PORT + workers - 1 (0 would hide them from "
                          "each other)")
    if base + count - 1 > 65535:
        raise ConfigError(f"workers: cluster ports {base}..{base + count - 1} do not fit below 65536")
    if mesh and len(settings.cluster_secret.encode()) < 32:
        raise ConfigError(f"cluster_secret: {count} Hypercorn workers form a mesh and need a shared "
                          f"secret of at least 32 bytes: set {env_name('cluster_secret')} (the "
                          "Hypercorn parent runs none of our code, so none can be generated)")
    for offset in range(count):
        try:
            sock = _claim(host, base + offset, mesh=mesh)
        except OSError:
            continue
        name = worker_name(settings, http_host, http_port, offset + 1)
        addresses = [host_port(host, base + i) for i in range(count)]
        try:
            mine = worker_settings(
                settings, count, name=name, engine=engine,
                cluster_bind=addresses[offset] if mesh else "",
                cluster_advertise=advertised(settings, addresses[offset], offset) if mesh else "",
                peers=[advertised(settings, a, i) for i, a in enumerate(addresses) if i != offset])
        except ConfigError:
            sock.close()
            raise
        return ClaimedWorker(offset + 1, mine, sock, engine.note(count))
    raise ConfigError(f"workers: no free port in {host_port(host, base)}..{base + count - 1} for this "
                      f"worker: are more Hypercorn workers running than workers = {count}, or "
                      "another server on these ports?")
