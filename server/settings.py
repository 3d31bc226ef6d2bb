"""Node settings: defaults <- conf/webserver.toml <- WEBSERVER_* environment <- CLI flags.

Every field of `Settings` is a setting; its environment name is `WEBSERVER_` plus
the field name in upper case (`bind` -> `WEBSERVER_BIND`). Unknown keys in the
file and unknown `WEBSERVER_*` variables are rejected with an error that names
them, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from server.engine.valkey.url import parse_url
from server.errors import ConfigError
from server.runtime import parse_gc_thresholds

# The source checkout (tests read conf/ through it); an installed node never looks here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def packaged_default(name: str) -> Path:
    """A default configuration file the package carries (server/defaults/NAME, package
    data): in a checkout a link to conf/NAME, the file people edit; in a wheel a copy."""
    resource = resources.files("server") / "defaults" / name
    # A package installed as files (a wheel, a checkout) gives a pathlib.Path: the loaders
    # open it by path, like a --config FILE, and messages name it.
    return Path(str(resource))


DEFAULT_CONFIG = packaged_default("webserver.toml")
ENV_PREFIX = "WEBSERVER_"
# Names of variables that steer loading rather than being settings themselves.
CONFIG_ENV = "WEBSERVER_CONFIG"
ENGINES = ("", "memory", "mesh", "valkey")
VALKEY_MODES = ("standalone", "cluster", "sentinel")
MAX_WORKERS = 32
_ZERO_MEANS_OFF = {"tcp_user_timeout", "ws_ping_interval", "anti_entropy_interval", "trace_buffer_spans"}


@dataclass(frozen=True)
class Settings:
    """One node's settings. Sizes are bytes, durations seconds."""

    bind: str = "127.0.0.1:4000"
    # Processes serving `bind`, each a cluster member (server/worker_plan.py): how many
    # `python -m server` starts, or, under the Hypercorn CLI, its --workers (say the same).
    workers: int = 1
    # Empty means "webserver@<host>:<port>" of the address actually bound.
    node_name: str = ""
    # http://HOST:PORT where other nodes and the pages reach this node (the trace
    # viewer asks peers there on the valkey engine); empty: the address bound.
    # Set it when bind is a wildcard (0.0.0.0) or behind NAT / in a container.
    advertise_url: str = ""
    history_size: int = 50
    # Frames a connection may have queued before the broadcaster drops for it.
    outbound_queue_size: int = 256
    # A connection whose queue stays full this long is closed with 1008.
    slow_consumer_timeout: float = 5.0
    # Kernel-level cap on unacknowledged/unsent data (TCP_USER_TIMEOUT); 0 = off.
    tcp_user_timeout: float = 20.0
    # The node pings each WebSocket this often (0 = never; Hub.run_pinger): with tcp_user_timeout
    # a peer that vanished without a FIN is found even on an idle connection.
    ws_ping_interval: float = 30.0
    # The broadcaster writes a frame straight to a member's socket when it is free
    # (server/http/direct_send.py); off: every frame goes through the writer task.
    ws_direct_writes: bool = True
    ws_max_message_size: int = 131072
    max_chat_text_bytes: int = 16384
    max_value_bytes: int = 65536
    # Whole HTTP request body cap, checked before parsing.
    max_body_bytes: int = 70000
    broadcast_queue_size: int = 4096
    max_rooms: int = 10000
    max_rooms_per_connection: int = 32
    max_keys: int = 100000
    shutdown_timeout: float = 5.0
    # Python GC thresholds "gen0,gen1,gen2" ("" keeps Python's); see server/runtime.py.
    gc_thresholds: str = "200000,100,1000"
    telemetry_config: str = str(packaged_default("opentelemetry.toml"))
    log_level: str = "INFO"
    # Recent finished spans kept in memory for /debug/traces (~1.3 KB each); 0 = no buffer.
    trace_buffer_spans: int = 1000
    # Where KV, chat between nodes, presence, history and membership live
    # (server/engine/): "memory" (one node), "mesh" (our own cluster, needs
    # cluster_bind) or "valkey" (a Valkey/Redis server, Sentinel or Cluster).
    # Empty: "mesh" when cluster_bind is set, else "memory".
    engine: str = ""
    # -- valkey engine (server/engine/valkey/)
    # redis://[:password@]HOST:PORT[/DB] (rediss:// for TLS); for Cluster, the
    # seed nodes as a comma-separated list of URLs; for Sentinel, the sentinels.
    valkey_url: str = field(default="redis://127.0.0.1:6379/0", repr=False)
    valkey_mode: str = "standalone"    # standalone, cluster or sentinel
    valkey_sentinel_service: str = "mymaster"  # the primary's name the sentinels watch
    valkey_prefix: str = "webserver"   # every key and channel starts with this
    valkey_timeout: float = 2.0        # per engine call; past it KV answers 503
    # -- cluster (server/cluster/): empty cluster_bind = a single node, no peer links.
    # HOST:PORT the node listens on for peer links (keep it off public interfaces).
    cluster_bind: str = ""
    # HOST:PORT peers should dial to reach this node; empty = cluster_bind's host and bound port.
    cluster_advertise: str = ""
    # Comma-separated cluster addresses (HOST:PORT) of seed peers; the rest is learnt.
    peers: str = ""
    # Shared secret of at least 32 bytes; required when cluster_bind is set.
    cluster_secret: str = field(default="", repr=False)
    replicas: int = 3            # N: copies of each key
    write_quorum: int = 2        # W: acks before a write succeeds
    read_quorum: int = 2         # R: answers before a read returns
    heartbeat_interval: float = 1.0
    failure_timeout: float = 5.0           # a peer silent this long is down
    member_removal_timeout: float = 30.0   # down this long: removed by a majority, keys handed off
    handshake_timeout: float = 5.0
    cluster_request_timeout: float = 2.0   # quorum deadline: past it the client gets 503
    reconnect_max_backoff: float = 10.0
    # Every this often each node sends its entries to their replicas (0 = only on
    # membership changes): replicas that missed a write catch up without a read.
    anti_entropy_interval: float = 60.0
    link_queue_size: int = 1024            # frames queued per peer link
    cluster_max_message_bytes: int = 1048576

    def validate(self) -> Settings:
        _check_address("bind", self.bind)
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if value < 0 or (value == 0 and f.name not in _ZERO_MEANS_OFF):
                    raise ConfigError(f"{f.name}: must be positive, got {value!r}")
        parse_gc_thresholds(self.gc_thresholds)
        if self.workers > MAX_WORKERS:
            raise ConfigError(f"workers: at most {MAX_WORKERS}, got {self.workers}")
        if self.max_body_bytes < self.max_value_bytes:
            raise ConfigError("max_body_bytes: must be at least max_value_bytes")
        self._validate_cluster()
        self._validate_engine()
        return self

    def _validate_engine(self) -> None:
        if self.advertise_url and not self.advertise_url.startswith(("http://", "https://")):
            raise ConfigError(f"advertise_url: expected http://HOST:PORT, got {self.advertise_url!r}")
        if self.engine not in ENGINES:
            raise ConfigError(f"engine: expected one of {', '.join(ENGINES[1:])}, got {self.engine!r}")
        kind = self.engine_kind
        if kind == "mesh" and not self.cluster_bind:
            raise ConfigError("engine: \"mesh\" needs cluster_bind (the address peers dial)")
        if kind != "mesh" and (self.cluster_bind or self.peer_addresses):
            raise ConfigError(f"cluster_bind and peers: only for the mesh engine, not {kind!r}")
        if self.valkey_mode not in VALKEY_MODES:
            raise ConfigError(f"valkey_mode: expected one of {', '.join(VALKEY_MODES)}, "
                              f"got {self.valkey_mode!r}")
        if kind == "valkey":
            urls = self.valkey_urls
            if not urls:
                raise ConfigError("valkey_url: required for the valkey engine")
            for url in urls:
                parse_url(url)
            if len(urls) > 1 and self.valkey_mode == "standalone":
                raise ConfigError("valkey_url: several URLs need valkey_mode = \"cluster\" or \"sentinel\"")
            if not self.valkey_prefix or any(c in self.valkey_prefix for c in "{} "):
                raise ConfigError("valkey_prefix: must be non-empty, without braces or spaces")

    @property
    def engine_kind(self) -> str:
        """The engine in use: `engine`, or for an empty one mesh/memory by cluster_bind."""
        return self.engine or ("mesh" if self.cluster_bind else "memory")

    @property
    def valkey_urls(self) -> list[str]:
        return [u.strip() for u in self.valkey_url.split(",") if u.strip()]

    def _validate_cluster(self) -> None:
        for name in ("cluster_bind", "cluster_advertise"):
            if getattr(self, name):
                _check_address(name, getattr(self, name))
        for peer in self.peer_addresses:
            _check_address("peers", peer)
        if self.peer_addresses and not self.cluster_bind:
            raise ConfigError("peers: set cluster_bind too (the address this node listens on for peers)")
        if self.cluster_bind and len(self.cluster_secret.encode()) < 32:
            raise ConfigError("cluster_secret: must be at least 32 bytes when cluster_bind is set "
                              f"(set {env_name('cluster_secret')}; it is never generated silently)")
        if self.write_quorum > self.replicas or self.read_quorum > self.replicas:
            raise ConfigError("write_quorum and read_quorum: must not exceed replicas")
        host = self.cluster_bind.rpartition(":")[0].strip("[]")
        if host in ("0.0.0.0", "::", "") and self.cluster_bind and not self.cluster_advertise:
            raise ConfigError(f"cluster_advertise: required when cluster_bind is a wildcard address "
                              f"({self.cluster_bind}): peers need an address they can dial")
        if self.failure_timeout <= self.heartbeat_interval:
            raise ConfigError("failure_timeout: must be longer than heartbeat_interval")

    @property
    def peer_addresses(self) -> list[str]:
        return [p.strip() for p in self.peers.split(",") if p.strip()]

    @property
    def clustered(self) -> bool:
        """More than one node: the mesh or valkey engine."""
        return self.engine_kind != "memory"

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


def _check_address(name: str, value: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def _coerce(name: str, raw: Any, kind: type, *, source: str) -> Any:
    """Convert a file or environment value to the field's type, naming the culprit."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in {"1", "true", "yes", "on"}:
                return True
            if str(raw).lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{source}: {name} must be {kind.__name__}, got {raw!r}") from None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _field_types() -> dict[str, type]:
    return {f.name: _TYPES[str(f.type)] for f in fields(Settings)}


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Accept either top-level keys or a [server] table.
    server = data.pop("server", {})
    if not isinstance(server, dict):
        raise ConfigError(f"{path}: [server] must be a table")
    return {**data, **server}


def load_settings(
    *,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Resolve settings from every layer; raises ConfigError naming any unknown key."""
    env = os.environ if environ is None else environ
    types = _field_types()
    explicit = config_path or env.get(CONFIG_ENV)
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    values: dict[str, Any] = {}
    if explicit or path.exists():
        for key, raw in read_config_file(path).items():
            if key not in types:
                raise ConfigError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, raw, types[key], source=str(path))
    known_env = {env_name(name): name for name in types} | {CONFIG_ENV: ""}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        if var not in known_env:
            raise ConfigError(f"unknown environment variable {var} (not a webserver setting)")
        if var != CONFIG_ENV:
            name = known_env[var]
            values[name] = _coerce(name, raw, types[name], source=f"environment {var}")
    for name, raw in (overrides or {}).items():
        if raw is None:
            continue
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _coerce(name, raw, types[name], source="command line")
    return dataclasses.replace(Settings(), **values).validate()
