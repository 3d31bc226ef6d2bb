"""KV on three nodes under an open-loop load, against one node: p99 and errors at a fixed rate.

`python -m bench.kv_cluster [--rate 1000] [--seconds 20] [--engine mesh|valkey] [--rounds 1]
[--connections 16] [--timeout 2] [--tracing] [--check]`. Target (issue 13): three nodes at 1,000
ops/s, p99 <= 5 ms and 0 errors.

Two set-ups are up at once, every process pinned to the server core (bench.procs) and
this process (the load) to the other one:

- `3 nodes`: three real `python -m server` nodes, `--engine mesh` (the default: peer links,
  N=3 replicas, W=2/R=2 quorums) or `valkey` (one local valkey-server, all its threads on
  the server core, as in bench.engines);
- `1 node`: one node on the memory engine, for comparison.

Tracing is off (OTEL_SDK_DISABLED=true); `--tracing` turns it on in every node, exporting
to a closed loopback port as bench.http_kv's `down` variant does (spans made, export fails).

The load is open loop: operation i is due at t0 + i/rate whatever the answers do, and its
latency runs from that due time (not from when it was sent) to the end of its answer, so
a stall shows in every operation it delays (no coordinated omission). Operations alternate
PUT /kv/{key} (a 100-byte JSON value) and GET /kv/{key}, round robin over the nodes (so
each node gets puts and gets alike), keys drawn at random from 1000 put beforehand (so a
GET never meets a 404). Each node has a pool of `--connections` keep-alive HTTP/1.1
connections (raw sockets, one request in flight each, used in turn, one epoll loop, tens of
µs of client CPU per request, with the client's GC off during a run); an operation due
while every connection of its node is busy waits in that node's queue, its clock running.
An error is any answer but 200, a connection the server closed or that failed, or no answer
`--timeout` seconds after the due time. A timed-out request's connection leaves the pool
until its late answer comes (counted apart, "answered after their timeout") rather than
being redialled: a connect to a saturated server can wait out a one-second SYN
retransmission and stall the schedule. A connection Hypercorn ends after its 1000th
request ("connection: close") is replaced, not counted. The load ends once every
operation is answered or past its deadline.

Each set-up gets a 2 s warm-up at the rate (not counted), then `--rounds` measured runs of
`--seconds` each (set-ups alternating, order flipped every round); before each run the
set-ups' processes must be quiet (under 5% of a core, within 30 s), so an overloaded
set-up's backlog does not land in the other's run. Printed per run and pooled: the rate
answered in time (200 within the timeout, per second of load), p50/p90/p99/p99.9/max in ms
for puts, gets and both, errors by kind, the set-up's CPU (nodes and valkey-server,
/proc schedstat) per request sent, how busy the server core was (/proc/stat: anything
else running there shows), and how late the load generator dispatched at worst (its own
check). Last, the 3 nodes / 1 node ratios, and one verdict line per set-up against the
target, with the rate at which one core would saturate at the CPU per op measured. Exit
status 0 (like the other benchmarks, a figure missing its target is not a failure), or with
`--check` 1 when the three nodes miss the target. Results and a profile: bench/RESULTS.md.

Every wait has a deadline and every child is stopped on the way out (bench.procs).
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import select
import socket
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from bench.engines import (
    Cluster,
    HttpConn,
    cpu_spent,
    missing_valkey,
    pin_all_threads,
    put_body,
    start_nodes,
    url_of,
    wait_members,
)
from bench.procs import Cores, choose_cores, node_env, pin_self
from bench.report import banner, machine_header, percentile, ratio, table
from server.ports import free_port

NODES = 3
KEYS = 1000
WARMUP_SECONDS = 2.0
TARGET_P99_MS = 5.0
QUANTILES = (50.0, 90.0, 99.0, 99.9)
KINDS = ("put", "get")
_HEAD_END = b"\r\n\r\n"
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CONNECTION_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)
_RECV = 65536


@dataclass(frozen=True)
class Options:
    rate: float
    seconds: float
    engine: str
    rounds: int
    connections: int
    timeout: float
    tracing: bool
    check: bool


# -- accounting (no clock in here: tests/test_bench_kv_cluster.py) ---------------------
@dataclass(frozen=True)
class Op:
    """Operation `seq` of a run: due at `due_ns` (run clock), on node `node`."""

    seq: int
    due_ns: int
    node: int
    kind: str  # "put" or "get"
    key: str


class Schedule:
    """The open-loop plan: operation i is due at start + i * interval, whatever happened before.

    Puts and gets alternate, nodes go round robin, keys come from `rng`."""

    def __init__(self, rate: float, seconds: float, nodes: int, keys: list[str], rng: random.Random) -> None:
        if rate <= 0 or seconds <= 0 or nodes < 1 or not keys:
            raise ValueError("rate, seconds, nodes and keys must be positive")
        self.interval_ns = round(1e9 / rate)
        self.count = max(1, int(seconds * rate))
        self.nodes = nodes
        self.keys = keys
        self.rng = rng
        self.next = 0

    def due_ns(self, seq: int) -> int:
        return seq * self.interval_ns

    @property
    def span_ns(self) -> int:
        """From the first due time to one interval past the last: the load's length."""
        return self.count * self.interval_ns

    def take_due(self, now_ns: int) -> list[Op]:
        """Every operation due at or before `now_ns` (run clock) not taken yet, in order."""
        out: list[Op] = []
        while self.next < self.count and self.due_ns(self.next) <= now_ns:
            seq = self.next
            kind = KINDS[seq % 2]
            out.append(Op(seq, self.due_ns(seq), seq % self.nodes, kind,
                          self.keys[self.rng.randrange(len(self.keys))]))
            self.next += 1
        return out

    @property
    def done(self) -> bool:
        return self.next >= self.count

    def next_due_ns(self) -> int | None:
        return None if self.done else self.due_ns(self.next)


@dataclass
class Tally:
    """Latencies (ns from the due time) of answered operations, and the errors by kind."""

    latencies_ns: dict[str, list[int]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    sent: int = 0  # requests written to a socket
    late: int = 0  # answers that came after their operation had timed out (dropped)
    max_send_lag_ns: int = 0  # the load generator's lateness: dispatched this long after a due time

    def answered(self, op: Op, done_ns: int, status: int) -> None:
        if status == 200:
            self.latencies_ns[op.kind].append(done_ns - op.due_ns)
        else:
            self.error(str(status))

    def error(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1

    def dispatched(self, op: Op, now_ns: int) -> None:
        self.max_send_lag_ns = max(self.max_send_lag_ns, now_ns - op.due_ns)

    @property
    def ok(self) -> int:
        return sum(len(v) for v in self.latencies_ns.values())

    def merge(self, other: Tally) -> None:
        for k in KINDS:
            self.latencies_ns[k] += other.latencies_ns[k]
        for what, n in other.errors.items():
            self.errors[what] = self.errors.get(what, 0) + n
        self.failed += other.failed
        self.sent += other.sent
        self.late += other.late
        self.max_send_lag_ns = max(self.max_send_lag_ns, other.max_send_lag_ns)

    def quantiles_ms(self, kind: str | None = None) -> list[float]:
        """p50/p90/p99/p99.9 and max in ms over `kind` (both when None); NaN when empty."""
        values = sorted(self.latencies_ns[kind] if kind else
                        [v for k in KINDS for v in self.latencies_ns[k]])
        return [percentile(values, q) / 1e6 for q in QUANTILES] + [
            values[-1] / 1e6 if values else float("nan")]


@dataclass(frozen=True)
class Response:
    status: int
    length: int  # bytes of head and body
    close: bool  # "connection: close": the server closes the connection after it


def parse_response(buf: bytearray) -> Response | None:
    """The first whole HTTP/1.1 response in `buf`, or None while it is incomplete.

    Answers here always carry a content-length (Hypercorn, no chunked encoding). Hypercorn
    closes a keep-alive connection after 1000 requests (keep_alive_max_requests), saying so
    with "connection: close" in the last answer."""
    end = buf.find(_HEAD_END)
    if end < 0:
        return None
    found = _CONTENT_LENGTH.search(buf, 0, end + 2)
    total = end + 4 + (int(found.group(1)) if found else 0)
    if len(buf) < total:
        return None
    return Response(int(buf[9:12]), total, _CONNECTION_CLOSE.search(buf, 0, end + 2) is not None)


# -- the load -------------------------------------------------------------------------
class _Conn:
    __slots__ = ("buf", "node", "op", "orphan", "sock")

    def __init__(self, sock: socket.socket, node: int) -> None:
        self.sock = sock
        self.node = node
        self.buf = bytearray()
        self.op: Op | None = None
        self.orphan = False  # its operation timed out: the answer, when it comes, is dropped


class OpenLoop:
    """Keep-alive connection pools to the nodes and the epoll loop that plays a Schedule.

    A timed-out operation's connection is not closed and redialled (a blocking connect to a
    saturated server waits out a SYN retransmission, a second, and would stall the
    schedule): it stays out of the pool until its late answer arrives, then rejoins it."""

    def __init__(self, urls: list[str], connections: int, timeout: float) -> None:
        self.addrs = []
        for url in urls:
            parts = urlsplit(url)
            self.addrs.append((parts.hostname or "127.0.0.1", parts.port or 80))
        self.timeout_ns = int(timeout * 1e9)
        self._ep = select.epoll()
        self._by_fd: dict[int, _Conn] = {}
        self._idle: list[deque[_Conn]] = [deque() for _ in urls]
        self._busy: dict[int, _Conn] = {}  # fd -> connection with a request in flight
        self._queued: list[deque[Op]] = [deque() for _ in urls]
        self._view = memoryview(bytearray(_RECV))
        self._bodies = [put_body(i) for i in range(64)]
        try:
            for node in range(len(urls)):
                for _ in range(connections):
                    self._idle[node].append(self._open(node))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for c in list(self._by_fd.values()):
            self._drop(c)
        self._ep.close()

    def _open(self, node: int) -> _Conn:
        sock = socket.create_connection(self.addrs[node], timeout=1.0)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        conn = _Conn(sock, node)
        self._by_fd[sock.fileno()] = conn
        self._ep.register(sock.fileno(), select.EPOLLIN)
        return conn

    def _drop(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        self._by_fd.pop(fd, None)
        self._busy.pop(fd, None)
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass
        conn.sock.close()

    def _replace(self, conn: _Conn, tally: Tally, t0: int) -> None:
        """A connection the server closed or that failed: a fresh one in its place (rare)."""
        self._drop(conn)
        try:
            fresh = self._open(conn.node)
        except OSError as exc:
            tally.error(f"connect {type(exc).__name__}")  # the pool is one connection short
            return
        self._done_with(fresh, tally, t0)

    def _request(self, op: Op) -> bytes:
        host = f"{self.addrs[op.node][0]}:{self.addrs[op.node][1]}"
        if op.kind == "put":
            body = self._bodies[op.seq % len(self._bodies)]
            return (f"PUT /kv/{op.key} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        return f"GET /kv/{op.key} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()

    def _send(self, conn: _Conn, op: Op, tally: Tally, t0: int) -> None:
        conn.op = op
        conn.orphan = False
        conn.buf.clear()
        try:
            conn.sock.send(self._request(op))  # small: fits the empty send buffer at once
        except OSError as exc:
            tally.error(type(exc).__name__)
            conn.op = None
            self._replace(conn, tally, t0)
            return
        tally.sent += 1
        self._busy[conn.sock.fileno()] = conn

    def _dispatch(self, op: Op, tally: Tally, t0: int) -> None:
        idle = self._idle[op.node]
        if idle:
            self._send(idle.popleft(), op, tally, t0)  # FIFO: every connection stays in use
        else:
            self._queued[op.node].append(op)

    def _done_with(self, conn: _Conn, tally: Tally, t0: int) -> None:
        """`conn` is free: it takes the oldest operation queued for its node, else goes idle."""
        self._busy.pop(conn.sock.fileno(), None)
        conn.op = None
        conn.orphan = False
        queue = self._queued[conn.node]
        if queue:
            self._send(conn, queue.popleft(), tally, t0)
        else:
            self._idle[conn.node].append(conn)

    def _readable(self, conn: _Conn, tally: Tally, t0: int) -> None:
        try:
            size = conn.sock.recv_into(self._view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            size, reason = -1, type(exc).__name__
        else:
            reason = "closed by server"
        now = time.monotonic_ns() - t0
        if size <= 0 or conn.op is None:  # closed, failed, or bytes nobody asked for
            if conn.op is not None and not conn.orphan:
                tally.error(reason)
            if conn in self._idle[conn.node]:
                self._idle[conn.node].remove(conn)
            self._replace(conn, tally, t0)
            return
        conn.buf += self._view[:size]
        answer = parse_response(conn.buf)
        if answer is None:
            return
        if conn.orphan:
            tally.late += 1
        else:
            tally.answered(conn.op, now, answer.status)
        if answer.close:  # the server's last answer on this connection: a fresh one instead
            self._busy.pop(conn.sock.fileno(), None)
            conn.op = None
            self._replace(conn, tally, t0)
        else:
            self._done_with(conn, tally, t0)

    def _expire(self, now: int, tally: Tally) -> None:
        """Operations past their deadline (due + timeout), in flight or still queued: errors."""
        for conn in self._busy.values():
            if not conn.orphan and conn.op is not None and now - conn.op.due_ns > self.timeout_ns:
                tally.error("timeout")
                conn.orphan = True
        for queue in self._queued:
            while queue and now - queue[0].due_ns > self.timeout_ns:
                queue.popleft()
                tally.error("timeout")

    def _outstanding(self) -> int:
        """Operations sent or queued that are neither answered nor timed out."""
        return sum(not c.orphan for c in self._busy.values()) + sum(len(q) for q in self._queued)

    def play(self, schedule: Schedule) -> tuple[Tally, float, float]:
        """Run `schedule` until every operation is answered or timed out:
        (tally, seconds of schedule, wall seconds including the wait for the last answers)."""
        tally = Tally()
        gc.collect()
        gc.disable()  # no collector pause in the load generator's schedule
        try:
            return self._play(schedule, tally)
        finally:
            gc.enable()

    def _play(self, schedule: Schedule, tally: Tally) -> tuple[Tally, float, float]:
        t0 = time.monotonic_ns()
        hard_stop = schedule.span_ns + self.timeout_ns + 2_000_000_000
        last_expiry = 0
        while True:
            now = time.monotonic_ns() - t0
            for op in schedule.take_due(now):
                tally.dispatched(op, now)
                self._dispatch(op, tally, t0)
            if now - last_expiry > 1_000_000:
                self._expire(now, tally)
                last_expiry = now
            if schedule.done and not self._outstanding():
                break
            if now > hard_stop:  # cannot happen (everything expires first); a last guard
                raise RuntimeError(f"the load did not finish: {self._outstanding()} operations outstanding")
            nxt = schedule.next_due_ns()
            wait_ns = 10_000_000 if nxt is None else min(10_000_000, max(0, nxt - now))
            # epoll counts whole milliseconds, rounded up: sleep the whole ones, then poll
            # without sleeping until the due time (this core is the load generator's).
            for fd, _ in self._ep.poll((wait_ns // 1_000_000) / 1e3):
                conn = self._by_fd.get(fd)
                if conn is not None:
                    self._readable(conn, tally, t0)
        return tally, schedule.span_ns / 1e9, (time.monotonic_ns() - t0) / 1e9


# -- the set-ups ----------------------------------------------------------------------
@dataclass(frozen=True)
class Run:
    tally: Tally
    seconds: float  # of schedule
    wall: float  # seconds from the first due time to the last answer or timeout
    cpu: float  # CPU seconds of the set-up's processes (nodes, valkey-server) over `wall`
    core_busy: float  # share of the server core busy over `wall`, whoever used it (/proc/stat)


@dataclass
class Setup:
    name: str  # "3 nodes" or "1 node"
    cluster: Cluster
    runs: list[Run] = field(default_factory=list)

    def pooled(self) -> Tally:
        total = Tally()
        for r in self.runs:
            total.merge(r.tally)
        return total

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    @property
    def cpu(self) -> float:
        return sum(r.cpu for r in self.runs)


def core_times(cpu: int | None) -> tuple[int, int]:
    """(busy, total) jiffies of CPU `cpu` (all CPUs when None) from /proc/stat."""
    name = "cpu" if cpu is None else f"cpu{cpu}"
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            fields = line.split()
            if fields[0] == name:
                ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
                return sum(ticks) - ticks[3] - ticks[4], sum(ticks)
    raise RuntimeError(f"no {name} line in /proc/stat")


def settle(clusters: list[Cluster], quiet: float = 0.05, timeout: float = 30.0) -> float:
    """Wait until every set-up process together uses under `quiet` of a core (a set-up that
    was overloaded keeps working off its backlog after its load ends): the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(sum(c.cpu()) for c in clusters)
        time.sleep(0.5)
        if (sum(sum(c.cpu()) for c in clusters) - before) / 0.5 < quiet:
            break
    return time.monotonic() - started


@contextmanager
def setups(opts: Options, cores: Cores) -> Iterator[tuple[list[Setup], str]]:
    """The three nodes (and valkey-server) and the single node, all up; yields them and a
    line describing the engine."""
    def env(**settings: str) -> dict[str, str]:
        if opts.tracing:
            return node_env("on", f"http://127.0.0.1:{free_port()}", **settings)
        return node_env("off", **settings)

    with ExitStack() as stack:
        valkey_pid: int | None = None
        if opts.engine == "mesh":
            secret = random.SystemRandom().randbytes(24).hex()
            addresses = [f"127.0.0.1:{free_port()}" for _ in range(NODES)]
            envs = [env(engine="mesh", node_name=f"mesh-{i + 1}", cluster_bind=addresses[i],
                        peers=",".join(a for a in addresses if a != addresses[i]), cluster_secret=secret)
                    for i in range(NODES)]
            about = "mesh: N=3 W=2 R=2"
        else:
            from server.engine.valkey_process import start_valkey

            valkey = start_valkey()
            stack.callback(valkey.close)
            assert valkey.proc is not None
            valkey_pid = valkey.proc.pid
            pin_all_threads(valkey_pid, cores.server)
            version = subprocess.run([valkey.binary, "--version"], capture_output=True, text=True,
                                     timeout=10).stdout.strip()
            prefix = f"bench-{random.SystemRandom().randbytes(3).hex()}"  # one deployment: shared
            envs = [env(engine="valkey", node_name=f"valkey-{i + 1}", valkey_url=f"{valkey.url}/0",
                        valkey_prefix=prefix) for i in range(NODES)]
            about = f"valkey: {version.split(' build')[0]} (on the server core)"
        children = start_nodes(stack, opts.engine, envs, cores.server)
        three = Cluster(opts.engine, [url_of(c) for c in children], [c.pid for c in children], valkey_pid)
        single_child = start_nodes(stack, "memory", [env(engine="memory", node_name="single")], cores.server)
        single = Cluster("memory", [url_of(single_child[0])], [single_child[0].pid])
        wait_members(three, children)
        yield [Setup("3 nodes", three), Setup("1 node", single)], about


def populate(cluster: Cluster, keys: list[str]) -> None:
    """Every key put once (round robin over the nodes), so no GET meets a 404."""
    conns = [HttpConn(u) for u in cluster.urls]
    try:
        for i, key in enumerate(keys):
            status = conns[i % len(conns)].request("PUT", f"/kv/{key}", put_body(i))
            if status != 200:
                raise RuntimeError(f"{cluster.engine}: PUT /kv/{key} answered {status} while populating")
    finally:
        for c in conns:
            c.close()


def run_once(setup: Setup, opts: Options, keys: list[str], seconds: float, rng: random.Random,
             server_core: int | None) -> Run:
    # Fresh connections per run: Hypercorn closes keep-alive connections idle for 5 s.
    loop = OpenLoop(setup.cluster.urls, opts.connections, opts.timeout)
    try:
        cpu0, core0 = setup.cluster.cpu(), core_times(server_core)
        tally, span, wall = loop.play(Schedule(opts.rate, seconds, len(setup.cluster.urls), keys, rng))
        cpu, core1 = sum(cpu_spent(cpu0, setup.cluster.cpu())), core_times(server_core)
    finally:
        loop.close()
    busy = ratio(core1[0] - core0[0], core1[1] - core0[1])
    return Run(tally, span, wall, cpu, busy)


# -- report ---------------------------------------------------------------------------
def fmt(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def errors_text(tally: Tally) -> str:
    if not tally.failed:
        return "0"
    return f"{tally.failed} (" + ", ".join(f"{k} {v}" for k, v in sorted(tally.errors.items())) + ")"


def describe_run(setup: Setup, run: Run) -> str:
    t = run.tally
    late = f", {t.late} answered after their timeout" if t.late else ""
    return (f"{setup.name:<7} {t.ok / run.seconds:5.0f} ops/s  p50/p90/p99/p99.9/max "
            f"{fmt(t.quantiles_ms())} ms  errors {errors_text(t)}{late}; "
            f"{run.cpu / max(1, t.sent) * 1e6:.0f} µs CPU/op, server core busy {run.core_busy:.0%} "
            f"(this set-up {run.cpu / run.wall:.0%}); load generator late by <= "
            f"{t.max_send_lag_ns / 1e6:.1f} ms")


def meets(tally: Tally) -> bool:
    p99 = tally.quantiles_ms()[2]
    return tally.failed == 0 and tally.ok > 0 and p99 <= TARGET_P99_MS


def summarize(done: list[Setup], opts: Options) -> str:
    header = ["set-up", "ops", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors",
              "CPU µs/op"]
    rows = []
    pooled = {s.name: s.pooled() for s in done}
    for s in done:
        t = pooled[s.name]
        for kind in (*KINDS, None):
            ok = len(t.latencies_ns[kind]) if kind else t.ok
            q = t.quantiles_ms(kind)
            per_op = f"{s.cpu / max(1, t.sent) * 1e6:.0f}"
            last = [errors_text(t), per_op] if kind is None else ["", ""]
            rows.append([f"{s.name} {kind or 'all'}", str(ok), f"{ok / s.seconds:.0f}",
                         *(f"{v:.2f}" for v in q), *last])
    three, one = pooled["3 nodes"], pooled["1 node"]
    q3, q1 = three.quantiles_ms(), one.quantiles_ms()
    rows.append(["3 nodes / 1 node", "", f"{ratio(three.ok, one.ok):.2f}",
                 *(f"{ratio(a, b):.2f}" for a, b in zip(q3, q1, strict=True)), "",
                 f"{ratio(done[0].cpu / max(1, three.sent), done[1].cpu / max(1, one.sent)):.2f}"])
    lines = [table(header, rows),
             "latency: from each operation's due time to the end of its answer; ops/s: answered with 200 "
             "per second of load;\nCPU µs/op: the set-up's processes' CPU time (nodes, valkey-server) per "
             "request sent"]
    for s in done:
        t = pooled[s.name]
        p99 = t.quantiles_ms()[2]
        verdict = "MEETS" if meets(t) else "MISSES"
        why = [] if meets(t) else [w for w, bad in ((f"p99 {p99:.2f} ms > {TARGET_P99_MS:g} ms",
                                                      not p99 <= TARGET_P99_MS),
                                                     (f"{t.failed} errors", t.failed > 0)) if bad]
        lines.append(f"verdict {s.name} ({s.cluster.engine}): {verdict} the target at {opts.rate:g} ops/s "
                     f"(p99 <= {TARGET_P99_MS:g} ms, 0 errors): p99 {p99:.2f} ms, {t.failed} errors"
                     + (f" [{'; '.join(why)}]" if why else "")
                     + f"; at its {s.cpu / max(1, t.sent) * 1e6:.0f} µs of CPU per op"
                     " one core would saturate near "
                     f"{t.sent / s.cpu if s.cpu else float('nan'):.0f} ops/s")
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.kv_cluster", description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=1000.0, help="operations per second, open loop")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of load per set-up per round")
    p.add_argument("--engine", choices=("mesh", "valkey"), default="mesh", help="the three nodes' engine")
    p.add_argument("--rounds", type=int, default=1, help="measured rounds (after one warm-up each)")
    p.add_argument("--connections", type=int, default=16, help="keep-alive connections per node")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds after its due time an answer may take")
    p.add_argument("--tracing", action="store_true", help="tracing on, exporting to a closed port")
    p.add_argument("--check", action="store_true", help="exit 1 when the three nodes miss the target")
    a = p.parse_args(argv)
    if a.rate <= 0 or a.seconds <= 0 or a.rounds < 1 or a.connections < 1 or a.timeout <= 0:
        p.error("rate, seconds, rounds, connections and timeout must be positive")
    return Options(a.rate, a.seconds, a.engine, a.rounds, a.connections, a.timeout, a.tracing, a.check)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    print(banner(f"KV open loop: 3 nodes ({opts.engine}) vs 1 node at {opts.rate:g} ops/s"))
    if opts.engine == "valkey" and (why := missing_valkey()) is not None:
        print(f"skipped: {why}", flush=True)
        return 0
    started = time.monotonic()
    cores = choose_cores()
    pin_self(cores.client)
    rng = random.Random(13)
    tag = random.SystemRandom().randbytes(3).hex()
    keys = [f"bench-{tag}-{i:04d}" for i in range(KEYS)]
    with setups(opts, cores) as (done, about):
        print(machine_header())
        print(f"{cores.describe()}; 3 nodes: {about}; 1 node: memory engine; "
              f"tracing {'on (export to a closed port)' if opts.tracing else 'off'}")
        print(f"open loop {opts.rate:g} ops/s (due every {1e3 / opts.rate:g} ms), PUT/GET alternating, "
              f"round robin over the nodes, {KEYS} keys put beforehand, 100 B values; "
              f"{opts.connections} keep-alive connections per node; timeout {opts.timeout:g}s from the due "
              f"time; {opts.rounds} round(s) of "
              f"{opts.seconds:g}s per set-up after a {WARMUP_SECONDS:g}s warm-up", flush=True)
        clusters = [s.cluster for s in done]
        for s in done:
            populate(s.cluster, keys)
            run_once(s, opts, keys, WARMUP_SECONDS, rng, cores.server)
        print(f"up, {KEYS} keys put, warmed up in {time.monotonic() - started:.0f}s", flush=True)
        for rnd in range(1, opts.rounds + 1):
            for s in (done if rnd % 2 else done[::-1]):
                waited = settle(clusters)
                if waited > 2:
                    print(f"  (waited {waited:.0f}s for the server core to go quiet)", flush=True)
                s.runs.append(run_once(s, opts, keys, opts.seconds, rng, cores.server))
                print(f"  round {rnd} {describe_run(s, s.runs[-1])}", flush=True)
    print(summarize(done, opts))
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    return 1 if opts.check and not meets(done[0].pooled()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
