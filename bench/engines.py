"""Engines side by side: the mesh engine against the valkey engine, three nodes each.

`python -m bench.engines [--rounds 5] [--seconds 5] [--messages 1000] [--receivers 10]`.
Two clusters of three real `python -m server` nodes (tracing off: OTEL_SDK_DISABLED=true)
are up at once: `mesh` (our own cluster: peer links, N=3 replicas, W=2/R=2 quorums) and
`valkey` (WEBSERVER_ENGINE=valkey on one local valkey-server, server/engine/valkey_process.py).
The six nodes and every thread of valkey-server are pinned to the server core; this
process (the load) to the other. After one uncounted warm-up round, each round measures
both engines in turn, the order flipped every round (this VM drifts by ±15% between
windows a few seconds apart):

- KV: `--seconds` of a closed loop, one request in flight, round robin over the three
  nodes, PUT /kv/{key} (a ~100-byte JSON value) or GET /kv/{key} at 50/50 over 1000
  keys put beforehand; latency per request (perf_counter_ns), p50/p99 over all counted
  rounds. Any answer but 200 (or a socket error) is an error. The client is raw
  keep-alive sockets (one per node), not httpx: ~10-20 µs of client CPU per request
  instead of ~150-300 µs, so the latency measured is the servers', not the client's
  (the client has its own core, but in a closed loop its time is still in every sample).
- chat: a sender on node 1 and `--receivers` receivers on each of nodes 2 and 3 in one
  room (JSON protocol `webserver.v1`); closed loop: the next message is sent once every
  remote receiver has the previous one. Latency = send -> the last receiver got it;
  msg/s = messages / (first send -> last one complete), the median of the rounds. A
  message lost (not everywhere within 5 s) or delivered twice fails the run.
- CPU: the nodes' and valkey-server's CPU time (/proc) per KV request and per chat
  message, to show where the time goes.

Every wait has a deadline; everything listens on loopback only.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.procs import (
    TASKSET,
    Child,
    Cores,
    choose_cores,
    node_env,
    pin_self,
    pinned,
)
from bench.report import banner, machine_header, median, percentile, ratio, table
from bench.ws_client import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WsConn,
    close_all,
    encode_frame,
    open_many,
    parse_frames,
)
from server.announce import LISTENING
from server.ports import free_port

ENGINES = ("mesh", "valkey")
NODES = 3
KEYS = 1000
VALUE_PAD = "v" * 75  # the PUT body {"n":"NNNNNNNN","pad":"vvv..."} is 100 bytes
REQUEST_TIMEOUT = 5.0
STARTUP_TIMEOUT = 30.0
LOSS_TIMEOUT = 5.0  # a message not at every receiver this long after it was sent is lost
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Options:
    rounds: int
    seconds: float
    messages: int
    receivers: int


# -- processes ------------------------------------------------------------------------
@dataclass
class Cluster:
    engine: str
    urls: list[str]
    node_pids: list[int]
    valkey_pid: int | None = None

    def cpu(self) -> list[float]:
        """CPU seconds used so far by node 1, 2, 3 and valkey-server (0 for the mesh)."""
        nodes = [cpu_time(p) for p in self.node_pids]
        return [*nodes, cpu_time(self.valkey_pid) if self.valkey_pid is not None else 0.0]


def cpu_spent(before: list[float], after: list[float]) -> list[float]:
    return [b - a for a, b in zip(before, after, strict=True)]


def cpu_time(pid: int) -> float:
    """CPU seconds of all of `pid`'s threads, to the nanosecond (/proc/PID/task/*/schedstat:
    /proc/PID/stat counts in 10 ms ticks, too coarse for a one-second run)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # the thread just ended
            continue
    return total / 1e9


def start_nodes(stack: ExitStack, engine: str, envs: list[dict[str, str]], cpu: int | None) -> list[Child]:
    """Start every node at once, wait for each to listen; all are stopped when `stack` closes."""
    children: list[Child] = []

    def stop_all() -> None:
        for c in children:  # SIGTERM to all first: they shut down in parallel
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        for c in children:
            c.stop()

    stack.callback(stop_all)
    for i, env in enumerate(envs, 1):
        children.append(Child(pinned(cpu, [sys.executable, "-m", "server"]), env, f"{engine}-{i}"))
    for c in children:
        c.wait_for_line(LISTENING, timeout=STARTUP_TIMEOUT)
        if cpu is not None and os.sched_getaffinity(c.pid) != {cpu}:
            raise RuntimeError(f"{c.name} is not pinned to CPU {cpu}")
    return children


def url_of(child: Child) -> str:
    found = LISTENING.search(child.output())
    if found is None:
        raise RuntimeError(f"{child.name}: no listening line")
    return found.group(2)


def wait_members(cluster: Cluster, children: list[Child]) -> None:
    """Until every node's GET /nodes lists all three (the cluster has formed)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen: list[object] = []
    while time.monotonic() < deadline:
        seen = []
        for url in cluster.urls:
            try:
                with urllib.request.urlopen(f"{url}/nodes", timeout=2) as answer:  # loopback only
                    seen.append(json.loads(answer.read())["nodes"])
            except (OSError, ValueError, KeyError) as exc:
                seen.append(repr(exc))
        if all(isinstance(s, list) and len(s) == NODES for s in seen):
            return
        time.sleep(0.1)
    logs = "\n".join(f"--- {c.name}\n{c.log_tail(15)}" for c in children)
    raise RuntimeError(f"{cluster.engine}: the cluster did not form within {STARTUP_TIMEOUT:g}s: "
                       f"{seen}\n{logs}")


def pin_all_threads(pid: int, cpu: int | None) -> None:
    """Every thread of `pid` onto `cpu` (`taskset -a -p -c CPU PID`)."""
    if cpu is None or not os.path.exists(TASKSET):
        return
    subprocess.run([TASKSET, "-a", "-p", "-c", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL,
                   timeout=10)
    for tid in os.listdir(f"/proc/{pid}/task"):
        if os.sched_getaffinity(int(tid)) != {cpu}:
            raise RuntimeError(f"valkey-server thread {tid} is not pinned to CPU {cpu}")


@contextmanager
def clusters(cores: Cores, tag: str) -> Iterator[tuple[dict[str, Cluster], str]]:
    """Both three-node clusters (and valkey-server), up at once; yields them and the
    valkey-server version line."""
    from server.engine.valkey_process import start_valkey

    with ExitStack() as stack:
        valkey = start_valkey()
        stack.callback(valkey.close)
        assert valkey.proc is not None
        pin_all_threads(valkey.proc.pid, cores.server)
        version = subprocess.run([valkey.binary, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        secret = os.urandom(24).hex()
        cluster_ports = [free_port() for _ in range(NODES)]
        addresses = [f"127.0.0.1:{p}" for p in cluster_ports]
        mesh_envs = [node_env("off", engine="mesh", node_name=f"mesh-{i + 1}", cluster_bind=addresses[i],
                              peers=",".join(a for a in addresses if a != addresses[i]),
                              cluster_secret=secret) for i in range(NODES)]
        valkey_envs = [node_env("off", engine="valkey", node_name=f"valkey-{i + 1}",
                                valkey_url=f"{valkey.url}/0", valkey_prefix=f"bench-{tag}")
                       for i in range(NODES)]
        out: dict[str, Cluster] = {}
        started: dict[str, list[Child]] = {}
        for engine, envs in (("mesh", mesh_envs), ("valkey", valkey_envs)):
            children = start_nodes(stack, engine, envs, cores.server)
            started[engine] = children
            out[engine] = Cluster(engine, [url_of(c) for c in children], [c.pid for c in children],
                                  valkey.proc.pid if engine == "valkey" else None)
        for engine, cluster in out.items():
            wait_members(cluster, started[engine])
        yield out, version


# -- KV -------------------------------------------------------------------------------
class HttpConn:
    """One keep-alive HTTP/1.1 connection, one request at a time, blocking with a timeout."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.addr = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.host = f"{self.addr[0]}:{self.addr[1]}"
        self.buf = bytearray()
        self.sock = self._connect()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr, timeout=REQUEST_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def reconnect(self) -> None:
        self.close()
        self.buf.clear()
        self.sock = self._connect()

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, path: str, body: bytes = b"") -> int:
        """Send one request, read its whole answer; the status code."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.sock.sendall(head.encode() + b"\r\n" + body)
        buf = self.buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        found = _CONTENT_LENGTH.search(buf, 0, end + 2)
        total = end + 4 + (int(found.group(1)) if found else 0)
        while len(buf) < total:
            self._fill()
        status = int(buf[9:12])
        del buf[:total]
        return status

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buf += chunk


def put_body(n: int) -> bytes:
    return f'{{"n":"{n:08d}","pad":"{VALUE_PAD}"}}'.encode()


def key_names(tag: str) -> list[str]:
    return [f"bench-{tag}-{i:04d}" for i in range(KEYS)]


def populate(cluster: Cluster, keys: list[str]) -> None:
    conns = [HttpConn(u) for u in cluster.urls]
    try:
        for i, key in enumerate(keys):
            status = conns[i % NODES].request("PUT", f"/kv/{key}", put_body(i))
            if status != 200:
                raise RuntimeError(f"{cluster.engine}: PUT /kv/{key} answered {status} while populating")
    finally:
        for c in conns:
            c.close()


@dataclass
class KvRun:
    put_ns: list[int] = field(default_factory=list)
    get_ns: list[int] = field(default_factory=list)
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)  # what the errors were
    cpu: list[float] = field(default_factory=list)  # seconds: node 1, 2, 3, valkey-server

    @property
    def requests(self) -> int:
        return len(self.put_ns) + len(self.get_ns)


def kv_run(cluster: Cluster, keys: list[str], seconds: float, rng: random.Random) -> KvRun:
    # Fresh connections per run: Hypercorn closes keep-alive connections idle for 5 s.
    conns = [HttpConn(u) for u in cluster.urls]
    run = KvRun()
    n = 0
    cpu0 = cluster.cpu()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            conn = conns[n % NODES]
            key = keys[rng.randrange(KEYS)]
            put = rng.random() < 0.5
            body = put_body(n) if put else b""
            n += 1
            started = time.perf_counter_ns()
            try:
                status = conn.request("PUT" if put else "GET", f"/kv/{key}", body)
            except OSError as exc:
                status, what = 0, type(exc).__name__
                conn.reconnect()
            else:
                what = str(status)
            took = time.perf_counter_ns() - started
            (run.put_ns if put else run.get_ns).append(took)
            if status != 200:
                run.errors += 1
                run.statuses[what] = run.statuses.get(what, 0) + 1
    finally:
        for c in conns:
            c.close()
    cpu1 = cluster.cpu()
    run.cpu = cpu_spent(cpu0, cpu1)
    return run


# -- chat -----------------------------------------------------------------------------
@dataclass
class ChatRun:
    messages: int
    seconds: float
    latencies_ns: list[int]
    cpu: list[float]  # seconds: node 1, 2, 3, valkey-server

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


class ChatRoom:
    """A sender on node 1, receivers on nodes 2 and 3, all in one room; open for the whole run."""

    def __init__(self, cluster: Cluster, receivers_per_node: int, tag: str) -> None:
        self.cluster = cluster
        self.room = f"bench-{tag}"
        self.tag = tag
        self._prefix = f"{tag}:"
        self.conns: list[WsConn] = []
        try:
            self.sender = self._open(cluster.urls[0], ["sender"])[0]
            self.receivers: list[WsConn] = []
            for node, url in enumerate(cluster.urls[1:], 2):
                self.receivers += self._open(url, [f"r{node}x{i}" for i in range(receivers_per_node)])
        except BaseException:
            close_all(self.conns)
            raise
        self.sender.sock.settimeout(REQUEST_TIMEOUT)  # written blocking; read only when epoll says so
        self._who = {c.fileno(): i for i, c in enumerate(self.receivers)}
        self._who[self.sender.fileno()] = -1
        self._by_fd = {c.fileno(): c for c in self.conns}
        self._ep = select.epoll()
        for fd in self._by_fd:
            self._ep.register(fd, select.EPOLLIN)
        self._view = memoryview(bytearray(262144))
        # (kind, seq) -> receivers that got it; every phase's, so a late copy is still caught
        self.seen: dict[tuple[str, int], set[int]] = {}
        self.arrival_ns: dict[tuple[str, int], int] = {}  # when the last receiver got it
        self.duplicates: list[tuple[str, int, int]] = []
        self.joined: set[int] = set()
        self._join()

    def _open(self, url: str, users: list[str]) -> list[WsConn]:
        parts = urlsplit(url)
        opened = open_many(parts.hostname or "127.0.0.1", parts.port or 80,
                           [f"/ws?username={u}&protocol=json" for u in users])
        self.conns += opened
        return opened

    def close(self) -> None:
        self._ep.close()
        close_all(self.conns)

    def _join(self) -> None:
        request = json.dumps({"type": "join", "room": self.room, "ref": "join"})
        for c in self.conns:
            c.sock.sendall(encode_frame(OP_TEXT, request.encode()))
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while len(self.joined) < len(self.conns):
            if (left := deadline - time.monotonic()) <= 0:
                raise RuntimeError(f"{self.cluster.engine}: only {len(self.joined)} of {len(self.conns)} "
                                   "connections joined the room")
            self._pump(min(left, 0.1))

    def _send(self, kind: str, seq: int) -> int:
        now = time.monotonic_ns()
        text = f"{self.tag}:{kind}:{seq}:{now}"
        frame = json.dumps({"type": "chat", "room": self.room, "text": text})
        self.sender.sock.sendall(encode_frame(OP_TEXT, frame.encode()))
        return now

    def _pump(self, timeout: float) -> None:
        """Read what arrived within `timeout` seconds; raise on an error, a close or a lost link."""
        for fd, _ in self._ep.poll(timeout):
            conn, who = self._by_fd[fd], self._who[fd]
            try:
                size = conn.sock.recv_into(self._view)
            except (BlockingIOError, InterruptedError):
                continue
            if not size:
                raise RuntimeError(f"{self.cluster.engine}: the server closed connection {who}")
            conn.buf += self._view[:size]
            now = time.monotonic_ns()
            for op, payload in parse_frames(conn):
                if op == OP_TEXT:
                    self._frame(json.loads(payload), who, now)
                elif op == OP_PING:
                    conn.sock.send(encode_frame(OP_PONG, payload))
                elif op == OP_CLOSE:
                    raise RuntimeError(f"{self.cluster.engine}: connection {who} closed by the server: "
                                       f"{payload[:2].hex()} {payload[2:].decode(errors='replace')}")

    def _frame(self, frame: dict[str, object], who: int, now: int) -> None:
        kind = frame.get("type")
        if kind == "batch":
            frames = frame.get("frames")
            assert isinstance(frames, list)
            for inner in frames:
                self._frame(inner, who, now)
        elif kind == "error":
            raise RuntimeError(f"{self.cluster.engine}: connection {who} got an error: {frame}")
        elif kind == "ok" and frame.get("op") == "join":
            self.joined.add(who)
        elif kind == "message" and who >= 0:
            text = frame.get("text")
            if not isinstance(text, str) or not text.startswith(self._prefix):
                return
            _, phase, seq, _sent = text.split(":")
            at = (phase, int(seq))
            got = self.seen.setdefault(at, set())
            if who in got:
                self.duplicates.append((phase, int(seq), who))
            got.add(who)
            if len(got) == len(self.receivers):
                self.arrival_ns[at] = now

    def sync(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Probes until every receiver has one: the nodes know where the members are."""
        deadline = time.monotonic() + timeout
        seq = 0
        while not any(k == "s" for k, _ in self.arrival_ns):
            if time.monotonic() > deadline:
                got = max((len(v) for (k, _), v in self.seen.items() if k == "s"), default=0)
                raise RuntimeError(f"{self.cluster.engine}: probes reached at most {got} of "
                                   f"{len(self.receivers)} remote receivers within {timeout:g}s")
            self._send("s", seq)
            seq += 1
            end = time.monotonic() + 0.25
            while ("s", seq - 1) not in self.arrival_ns and (left := end - time.monotonic()) > 0:
                self._pump(left)
        end = time.monotonic() + 0.3  # let earlier probes drain
        while (left := end - time.monotonic()) > 0:
            self._pump(left)

    def run(self, kind: str, count: int) -> ChatRun:
        """`count` messages, each sent once the previous one reached every remote receiver."""
        latencies: list[int] = []
        cpu0 = self.cluster.cpu()
        first = 0
        for seq in range(count):
            at = (kind, seq)
            sent = self._send(kind, seq)
            first = first or sent
            deadline = time.monotonic() + LOSS_TIMEOUT
            while at not in self.arrival_ns:
                if (left := deadline - time.monotonic()) <= 0:
                    raise RuntimeError(
                        f"{self.cluster.engine}: message {kind}:{seq} LOST: after {LOSS_TIMEOUT:g}s only "
                        f"{len(self.seen.get(at, ()))} of {len(self.receivers)} remote receivers have it")
                self._pump(left)
            latencies.append(self.arrival_ns[at] - sent)
        done = self.arrival_ns[kind, count - 1]
        cpu1 = self.cluster.cpu()
        if self.duplicates:
            raise RuntimeError(f"{self.cluster.engine}: DUPLICATES (phase, seq, receiver): "
                               f"{self.duplicates[:10]} ({len(self.duplicates)} in all)")
        return ChatRun(count, (done - first) / 1e9, latencies, cpu_spent(cpu0, cpu1))

    def check_quiet(self, seconds: float = 0.5) -> None:
        """A last look for late duplicates."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._pump(left)
        if self.duplicates:
            raise RuntimeError(f"{self.cluster.engine}: DUPLICATES (phase, seq, receiver): "
                               f"{self.duplicates[:10]} ({len(self.duplicates)} in all)")


# -- report ---------------------------------------------------------------------------
def ms(values_ns: list[int], q: float) -> float:
    return percentile(values_ns, q) / 1e6


def pair(values_ns: list[int]) -> str:
    s = sorted(values_ns)
    return f"{ms(s, 50):.2f} / {ms(s, 99):.2f}"


def describe_round(engine: str, kv: KvRun, chat: ChatRun) -> str:
    return (f"{engine:<6} put {pair(kv.put_ns)} get {pair(kv.get_ns)} ms ({kv.requests} req, "
            f"{kv.errors} errors{' ' + str(kv.statuses) if kv.statuses else ''}); "
            f"chat {chat.rate:.0f} msg/s {pair(chat.latencies_ns)} ms")


def summarize(kvs: dict[str, list[KvRun]], chats: dict[str, list[ChatRun]], receivers: int) -> str:
    def pooled(runs: list[KvRun], attr: str) -> list[int]:
        return sorted(v for r in runs for v in getattr(r, attr))

    figures: dict[str, dict[str, float]] = {}
    rows = []
    for e in ENGINES:
        puts, gets = pooled(kvs[e], "put_ns"), pooled(kvs[e], "get_ns")
        lat = sorted(v for c in chats[e] for v in c.latencies_ns)
        f = figures[e] = {
            "put50": ms(puts, 50), "put99": ms(puts, 99), "get50": ms(gets, 50), "get99": ms(gets, 99),
            "errors": sum(r.errors for r in kvs[e]), "rate": median([c.rate for c in chats[e]]),
            "chat50": ms(lat, 50), "chat99": ms(lat, 99)}
        rows.append([e, f"{f['put50']:.2f} / {f['put99']:.2f}", f"{f['get50']:.2f} / {f['get99']:.2f}",
                     f"{f['errors']:.0f}", f"{f['rate']:.0f}", f"{f['chat50']:.2f} / {f['chat99']:.2f}"])
    m, v = figures["mesh"], figures["valkey"]

    def r(k1: str, k2: str) -> str:
        return f"{ratio(v[k1], m[k1]):.2f} / {ratio(v[k2], m[k2]):.2f}"

    rows.append(["valkey/mesh", r("put50", "put99"), r("get50", "get99"), "-",
                 f"{ratio(v['rate'], m['rate']):.2f}", r("chat50", "chat99")])
    lines = [table(["engine", "put p50/p99 ms", "get p50/p99 ms", "errors", "chat msg/s",
                    "chat p50/p99 ms"], rows)]
    lines.append(f"p50/p99: over all counted rounds; chat msg/s: median of the rounds (each message reaches "
                 f"{2 * receivers} remote receivers, so deliveries/s = {2 * receivers}x)")
    cpu_rows = []
    for e in ENGINES:
        reqs = sum(k.requests for k in kvs[e])
        msgs = sum(c.messages for c in chats[e])
        kv = [sum(k.cpu[i] for k in kvs[e]) / reqs * 1e6 for i in range(NODES + 1)]
        chat = [sum(c.cpu[i] for c in chats[e]) / msgs * 1e6 for i in range(NODES + 1)]
        split = "+".join(f"{x:.0f}" for x in chat[:NODES])
        cpu_rows.append([e, f"{sum(kv[:NODES]):.0f}", f"{kv[NODES]:.0f}",
                         f"{sum(chat[:NODES]):.0f} ({split})", f"{chat[NODES]:.0f}"])
    lines += ["", "server-core CPU per operation, all counted rounds (/proc/PID/task/*/schedstat):",
              table(["engine", "nodes µs/KV req", "valkey µs/KV req", "nodes µs/chat msg (n1+n2+n3)",
                     "valkey µs/chat msg"], cpu_rows)]
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="counted rounds (after one warm-up round)")
    p.add_argument("--seconds", type=float, default=5.0, help="seconds of KV load per engine per round")
    p.add_argument("--messages", type=int, default=1000, help="chat messages per engine per round")
    p.add_argument("--receivers", type=int, default=10, help="receivers on each of nodes 2 and 3")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.seconds <= 0 or a.messages < 1 or a.receivers < 1:
        p.error("rounds, seconds, messages and receivers must be positive")
    return Options(a.rounds, a.seconds, a.messages, a.receivers)


def missing_valkey() -> str | None:
    """Why the valkey engine cannot run here, or None."""
    from server.engine.valkey_process import ValkeyNotFound, find_server_binary

    if importlib.util.find_spec("coredis") is None:
        return "the valkey extra (coredis) is not installed: pip install 'webserver[valkey]'"
    try:
        find_server_binary()
    except ValkeyNotFound as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    print(banner("Engines: mesh vs valkey, three nodes each"))
    if (why := missing_valkey()) is not None:
        print(f"skipped: {why}", flush=True)
        return 0
    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())  # other work on this machine skews it
    cores = choose_cores()
    pin_self(cores.client)
    tag = os.urandom(3).hex()
    rng = random.Random(10)
    kvs: dict[str, list[KvRun]] = {e: [] for e in ENGINES}
    chats: dict[str, list[ChatRun]] = {e: [] for e in ENGINES}
    with clusters(cores, tag) as (nodes, version), ExitStack() as stack:
        print(machine_header())
        print(f"{cores.describe()} (the six nodes and all of valkey-server's threads on the server core); "
              f"{version.split(' build')[0]}; tracing off; mesh: N=3 W=2 R=2")
        print(f"{opts.rounds} rounds (+1 warm-up), engines alternating, order flipped each round; per round "
              f"and engine: {opts.seconds:g}s of KV (closed loop, 1 in flight, round robin over 3 nodes, "
              f"50/50 PUT/GET, {KEYS} keys, 100 B values) then {opts.messages} chat messages "
              f"(closed loop, sender on node 1, {opts.receivers} receivers on each of nodes 2 and 3)",
              flush=True)
        keys = key_names(tag)
        rooms: dict[str, ChatRoom] = {}
        for engine in ENGINES:
            populate(nodes[engine], keys)
            room = ChatRoom(nodes[engine], opts.receivers, tag)
            stack.callback(room.close)
            room.sync()
            rooms[engine] = room
        print(f"clusters formed, {KEYS} keys put, rooms joined in {time.monotonic() - started:.0f}s",
              flush=True)
        for rnd in range(opts.rounds + 1):
            order = ENGINES if rnd % 2 else ENGINES[::-1]
            kv_round = {e: kv_run(nodes[e], keys, opts.seconds if rnd else 1.0, rng) for e in order}
            chat_round = {e: rooms[e].run(f"m{rnd}", opts.messages if rnd else 50) for e in order}
            if rnd == 0:
                print("  round 0: warm-up", flush=True)
                continue
            for e in ENGINES:
                kvs[e].append(kv_round[e])
                chats[e].append(chat_round[e])
            print("\n".join(f"  round {rnd} {describe_round(e, kv_round[e], chat_round[e])}" for e in order),
                  flush=True)
        for room in rooms.values():
            room.check_quiet()
    counted = sum(c.messages for e in ENGINES for c in chats[e])
    print(f"chat: {counted} counted messages, each reached all {2 * opts.receivers} remote receivers exactly "
          "once (no loss, no duplicates)")
    print(summarize(kvs, chats, opts.receivers))
    print(f"done in {time.monotonic() - started:.0f}s; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} (at the start: {load_before})", flush=True)
    return 0 if all(r.errors == 0 for e in ENGINES for r in kvs[e]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
