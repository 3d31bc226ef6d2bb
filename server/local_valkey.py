"""The valkey side of `python -m server --cluster N --engine valkey`: which flags go
together, the local server's port and data directory, and URLs without passwords."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from server.engine.valkey_process import ping
from server.errors import ConfigError
from server.ports import host_port

CLUSTER_ENGINES = ("mesh", "valkey")
DEFAULT_VALKEY_PORT = 6379
VALKEY_HOST = "127.0.0.1"
VALKEY_DATA_PARENT = "test-output"  # under the current directory: in .gitignore, wiped by make clean


def check_cluster_engine(engine: str, *, valkey_url: str | None = None,
                         valkey_port: int | None = None) -> None:
    """The engine of a local cluster and its flags: mesh, or valkey (a local server on
    valkey_port, or the existing one at valkey_url)."""
    if engine == "memory":
        raise ConfigError("--engine memory: not with --cluster (the memory engine is one node's "
                          "state only); use --engine mesh or --engine valkey")
    if engine not in CLUSTER_ENGINES:
        raise ConfigError(f"--engine: expected {' or '.join(CLUSTER_ENGINES)} with --cluster, got {engine!r}")
    if engine != "valkey":
        for flag, value in (("--valkey-url", valkey_url), ("--valkey-port", valkey_port)):
            if value is not None:
                raise ConfigError(f"{flag}: only with --engine valkey")
    if valkey_url is not None and valkey_port is not None:
        raise ConfigError("--valkey-port: not with --valkey-url (the server at --valkey-url is "
                          "used; none is started)")
    if valkey_port is not None and not 0 <= valkey_port <= 65535:
        raise ConfigError(f"--valkey-port: expected 0 to 65535, got {valkey_port}")


def check_valkey_port_free(port: int, host: str = VALKEY_HOST) -> None:
    """Refuse a port something already listens on (a server of the user's, another
    `make cluster ENGINE=valkey`): the local server would fail to bind, or worse,
    the nodes would quietly use someone else's data."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            sock.bind((host, port))
            return
        except OSError as exc:
            reason = exc.strerror or str(exc)
    answer = ping(host, port)
    existing = (f"a Valkey/Redis server answers there: use it with --valkey-url "
                f"redis://{host_port(host, port)}/0, or " if answer.startswith(("+", "-")) else "")
    raise ConfigError(f"--valkey-port: {host_port(host, port)} is not free ({reason}); {existing}"
                      "start the local server on a free port with --valkey-port 0 "
                      "(or choose one with --valkey-port PORT)")


def valkey_data_dir(port: int) -> Path | None:
    """Where a local server on port keeps its AOF: test-output/valkey-PORT under the
    current directory, so a restart on the same port finds its data (one directory per
    port: two servers never share an AOF). None for port 0 (a free port, a temporary
    directory removed on stop: a later run gets another port anyway)."""
    return Path(VALKEY_DATA_PARENT, f"valkey-{port}").resolve() if port else None


def redact_url(url: str) -> str:
    """url(s) without any password (`redis://user:secret@host` -> `redis://user:***@host`)."""
    return re.sub(r"(//[^/@:,]*:)[^/@,]*@", r"\1***@", url)
