"""Valkey clients under Trio: coredis against valkey-glide, SET/GET latency and pub/sub throughput.

`python -m bench.valkey_clients [--rounds 5] [--ops 2000] [--messages 10000] [--window 32]`.
One local valkey-server (server/engine/valkey_process.py), all its threads pinned to the
server core; this process (so glide's Rust threads too, spawned after the pinning) on the
other. Each client connects once, inside one `trio.run`; then they take turns in
interleaved rounds, the order flipped every round, after one uncounted warm-up round
(this VM drifts by ±15% between windows a few seconds apart):

- latency: `--ops` SETs of a 100-byte value, then `--ops` GETs of the same keys, each
  awaited before the next (one command in flight), timed with perf_counter_ns; p50/p99
  over all counted rounds. `raw-resp` is the floor: the same commands hand-written in
  RESP on a bare trio socket.
- pub/sub: one connection publishes `--messages` 200-byte messages on a channel, another
  (subscribed once, at the start) receives them; msg/s = messages / (first PUBLISH sent
  -> last message received). "seq": each PUBLISH awaited before the next; "xW": W tasks
  publishing at once on the one connection. Every message carries its round and index:
  a lost, duplicated or foreign one (in "seq" also one out of order) fails the run.
- CPU: this process's CPU time (all threads) per command or message, client side only.

Ratios are glide/coredis, the median (and range) of the per-round ratios. Every wait is
under a trio deadline, so the bench cannot hang.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

import coredis
import trio
from coredis.patterns.pubsub import PubSub
from glide import GlideClient, GlideClientConfiguration, NodeAddress

from bench.procs import TASKSET, choose_cores, pin_self
from bench.report import banner, machine_header, median, percentile, ratio, table
from server.engine.valkey_process import ValkeyProcess, start_valkey

CLIENTS = ("coredis", "glide")
RAW = "raw-resp"  # the floor: SET/GET hand-written on a trio socket, latency only
VALUE_BYTES = 100
MESSAGE_BYTES = 200
CHANNEL = "bench:valkey-clients:{}"  # one per client: each PUBLISH must reach exactly one
CONNECT_TIMEOUT = 10.0
ROUND_TIMEOUT = 60.0


class KeyValue(Protocol):
    async def set(self, key: bytes, value: bytes) -> None: ...

    async def get(self, key: bytes) -> bytes | None: ...


class Client(KeyValue, Protocol):
    """The few calls the bench makes, so both clients run the same loops."""

    async def publish(self, message: bytes) -> int: ...

    async def receive(self) -> bytes: ...


class Coredis:
    def __init__(self, client: coredis.Redis[bytes], sub: PubSub[bytes]) -> None:
        self.client = client
        self.sub = sub

    async def set(self, key: bytes, value: bytes) -> None:
        await self.client.set(key, value)

    async def get(self, key: bytes) -> bytes | None:
        return await self.client.get(key)

    async def publish(self, message: bytes) -> int:
        return await self.client.publish(CHANNEL.format("coredis"), message)

    async def receive(self) -> bytes:
        while True:
            msg = await self.sub.get_message()
            if msg is not None and msg["type"] == "message" and isinstance(msg["data"], bytes):
                return msg["data"]


class Glide:
    def __init__(self, client: GlideClient, sub: GlideClient) -> None:
        self.client = client
        self.sub = sub

    async def set(self, key: bytes, value: bytes) -> None:
        await self.client.set(key, value)

    async def get(self, key: bytes) -> bytes | None:
        return await self.client.get(key)

    async def publish(self, message: bytes) -> int:
        return await self.client.publish(message, CHANNEL.format("glide"))  # glide: (message, channel)

    async def receive(self) -> bytes:
        # Never cancel this call under trio: glide 2.6 then hands the next message to the
        # abandoned waiter and it is lost. Only the round's own deadline wraps it.
        msg = await self.sub.get_pubsub_message()
        return msg.message if isinstance(msg.message, bytes) else str(msg.message).encode()


@asynccontextmanager
async def open_coredis(server: ValkeyProcess) -> AsyncIterator[Client]:
    """Two clients of one connection each, like glide's: coredis's default pool would open a
    connection per concurrent command in flight (16 for 32 publishers, at about the same rate)."""
    # No deadline may span an `async with` that opens a nursery: hence one per call here.
    async with coredis.Redis.from_url(server.url, connect_timeout=CONNECT_TIMEOUT, max_connections=1) \
            as client, coredis.Redis.from_url(server.url, connect_timeout=CONNECT_TIMEOUT) as listener:
        with trio.fail_after(CONNECT_TIMEOUT):
            await client.ping()
        async with listener.pubsub(channels=[CHANNEL.format("coredis")],
                                   ignore_subscribe_messages=True) as sub:
            yield Coredis(client, sub)


@asynccontextmanager
async def open_glide(server: ValkeyProcess) -> AsyncIterator[Client]:
    def config() -> GlideClientConfiguration:
        return GlideClientConfiguration([NodeAddress(server.host, server.port)])

    async with AsyncExitStack() as stack:
        # create() blocks the trio loop while it connects (up to its connection_timeout,
        # 2 s by default, so this deadline cannot cut it short); instant on a live local server.
        with trio.fail_after(CONNECT_TIMEOUT):
            client = await GlideClient.create(config())
            stack.push_async_callback(client.close)
            sub = await GlideClient.create(config())
            stack.push_async_callback(sub.close)
            await sub.subscribe({CHANNEL.format("glide")}, timeout_ms=int(CONNECT_TIMEOUT * 1000))
        yield Glide(client, sub)


class RawResp:
    """SET/GET as hand-written RESP on a trio socket, no client library: the floor."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()

    @staticmethod
    def command(*args: bytes) -> bytes:
        return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)

    async def reply(self) -> bytes | None:
        """One reply: simple string, bulk string or nil (an error reply raises)."""
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                kind, head = bytes(self.buf[:1]), bytes(self.buf[1:end])
                if kind in (b"+", b"-"):
                    del self.buf[:end + 2]
                    if kind == b"-":
                        raise RuntimeError(head.decode(errors="replace"))
                    return head
                size = int(head)
                if size < 0:
                    del self.buf[:end + 2]
                    return None
                if len(self.buf) >= end + 4 + size:
                    data = bytes(self.buf[end + 2:end + 2 + size])
                    del self.buf[:end + 4 + size]
                    return data
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise RuntimeError("server closed the connection")
            self.buf += chunk

    async def set(self, key: bytes, value: bytes) -> None:
        await self.stream.send_all(self.command(b"SET", key, value))
        await self.reply()

    async def get(self, key: bytes) -> bytes | None:
        await self.stream.send_all(self.command(b"GET", key))
        return await self.reply()


@asynccontextmanager
async def open_raw(server: ValkeyProcess) -> AsyncIterator[RawResp]:
    with trio.fail_after(CONNECT_TIMEOUT):
        stream = await trio.open_tcp_stream(server.host, server.port)
    async with stream:
        yield RawResp(stream)


@dataclass
class Samples:
    """One client's figures over the counted rounds (latencies in ns, CPU in µs)."""

    set_ns: list[int] = field(default_factory=list)
    get_ns: list[int] = field(default_factory=list)
    set_p50: list[float] = field(default_factory=list)
    get_p50: list[float] = field(default_factory=list)
    cpu_per_cmd: list[float] = field(default_factory=list)
    seq_rate: list[float] = field(default_factory=list)
    win_rate: list[float] = field(default_factory=list)
    cpu_per_msg: list[float] = field(default_factory=list)


async def latency_round(client: KeyValue, name: str, ops: int, s: Samples | None) -> str:
    """`ops` SETs then `ops` GETs, one at a time; recorded into `s` (None: warm-up)."""
    value = os.urandom(VALUE_BYTES // 2).hex().encode()
    keys = [f"bench:{name}:{i}".encode() for i in range(ops)]
    clock = time.perf_counter_ns
    sets: list[int] = []
    gets: list[int] = []
    cpu = time.process_time()
    for key in keys:
        start = clock()
        await client.set(key, value)
        sets.append(clock() - start)
    for key in keys:
        start = clock()
        got = await client.get(key)
        gets.append(clock() - start)
        if got != value:
            raise RuntimeError(f"{name}: GET {key!r} returned {got!r:.40}")
    cpu = time.process_time() - cpu
    if s is None:
        return ""
    s.set_ns += sets
    s.get_ns += gets
    s.set_p50.append(percentile(sorted(sets), 50) / 1000)
    s.get_p50.append(percentile(sorted(gets), 50) / 1000)
    s.cpu_per_cmd.append(cpu / (2 * ops) * 1e6)
    return f"{name} set {s.set_p50[-1]:.0f} get {s.get_p50[-1]:.0f} µs"


def message(round_no: int, index: int) -> bytes:
    head = f"{round_no}:{index}:".encode()
    return head + b"x" * (MESSAGE_BYTES - len(head))


async def pubsub_round(client: Client, name: str, round_no: int, count: int,
                       window: int) -> tuple[float, float]:
    """(messages per second from the first PUBLISH to the last receipt, process CPU µs per
    message); raises on any lost, duplicated or foreign message."""
    received: list[tuple[int, int]] = []
    done = trio.Event()
    first_sent = 0.0
    last_received = 0.0

    async def subscriber() -> None:
        nonlocal last_received
        while len(received) < count:
            data = await client.receive()
            r, i, _ = data.split(b":", 2)
            received.append((int(r), int(i)))
        last_received = time.perf_counter()
        done.set()

    async def publisher(first: int) -> None:
        for i in range(first, count, window):
            if await client.publish(message(round_no, i)) != 1:
                raise RuntimeError(f"{name}: PUBLISH did not reach exactly one subscriber")

    cpu = time.process_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(subscriber)
        first_sent = time.perf_counter()
        async with trio.open_nursery() as publishers:
            for first in range(window):
                publishers.start_soon(publisher, first)
        await done.wait()
    cpu = time.process_time() - cpu
    expected = [(round_no, i) for i in range(count)]
    if window == 1 and received != expected:
        raise RuntimeError(f"{name}: messages lost, duplicated or out of order in round {round_no}")
    if sorted(received) != expected:
        raise RuntimeError(f"{name}: {len(set(received) & set(expected))} of {count} messages arrived "
                           f"in round {round_no}, with {len(received) - len(set(received))} duplicates")
    return count / (last_received - first_sent), cpu / count * 1e6


def pin_server(server: ValkeyProcess, cpu: int | None) -> str:
    """Every thread of the server onto `cpu` (`taskset -a -p -c CPU PID`)."""
    if cpu is None or server.proc is None or not os.path.exists(TASKSET):
        return "server not pinned"
    subprocess.run([TASKSET, "-a", "-p", "-c", str(cpu), str(server.proc.pid)], check=True,
                   stdout=subprocess.DEVNULL)
    if os.sched_getaffinity(server.proc.pid) != {cpu}:
        raise RuntimeError(f"valkey-server is not pinned to CPU {cpu}")
    return f"valkey-server on CPU {cpu}"


@dataclass(frozen=True)
class Options:
    rounds: int
    ops: int
    messages: int
    window: int


async def run(server: ValkeyProcess, opts: Options) -> dict[str, Samples]:
    samples = {name: Samples() for name in (*CLIENTS, RAW)}
    async with open_coredis(server) as with_coredis, open_glide(server) as with_glide, \
            open_raw(server) as raw:
        clients = {"coredis": with_coredis, "glide": with_glide}
        kv: dict[str, KeyValue] = {**clients, RAW: raw}
        for round_no in range(opts.rounds + 1):  # round 0: warm-up, not counted
            order = CLIENTS if round_no % 2 else CLIENTS[::-1]
            counted = round_no > 0
            line = []
            for name in (*order, RAW) if round_no % 2 else (RAW, *order):
                gc.collect()
                with trio.fail_after(ROUND_TIMEOUT):
                    line.append(await latency_round(kv[name], name, opts.ops,
                                                    samples[name] if counted else None))
            for name in order:
                s = samples[name]
                gc.collect()
                with trio.fail_after(ROUND_TIMEOUT):
                    seq, _ = await pubsub_round(clients[name], name, 2 * round_no, opts.messages, 1)
                    win, cpu = await pubsub_round(clients[name], name, 2 * round_no + 1, opts.messages,
                                                  opts.window)
                if counted:
                    s.seq_rate.append(seq)
                    s.win_rate.append(win)
                    s.cpu_per_msg.append(cpu)
                    line.append(f"{name} pubsub {seq:.0f}/{win:.0f} msg/s")
            print(f"  round {round_no}: " + (", ".join(line) if counted else "warm-up"), flush=True)
    return samples


def summarize(samples: dict[str, Samples], window: int) -> str:
    def pct(ns: list[int]) -> str:
        ordered = sorted(ns)
        return f"{percentile(ordered, 50) / 1000:.0f} / {percentile(ordered, 99) / 1000:.0f}"

    def per_round(a: list[float], b: list[float]) -> str:
        ratios = [ratio(x, y) for x, y in zip(a, b, strict=True)]
        return f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"

    rows = []
    for name in (*CLIENTS, RAW):
        s = samples[name]
        pubsub = ([f"{median(s.seq_rate):.0f}", f"{median(s.win_rate):.0f}", f"{median(s.cpu_per_msg):.0f}"]
                  if s.seq_rate else ["-", "-", "-"])
        rows.append([f"{name} {version(name)}".strip(), pct(s.set_ns), pct(s.get_ns),
                     f"{median(s.cpu_per_cmd):.0f}", *pubsub])
    c, g = samples["coredis"], samples["glide"]
    rows.append(["glide/coredis: per-round median (range)", per_round(g.set_p50, c.set_p50),
                 per_round(g.get_p50, c.get_p50), per_round(g.cpu_per_cmd, c.cpu_per_cmd),
                 per_round(g.seq_rate, c.seq_rate), per_round(g.win_rate, c.win_rate),
                 per_round(g.cpu_per_msg, c.cpu_per_msg)])
    return "\n".join([
        table(["client", "set p50/p99 µs", "get p50/p99 µs", "CPU µs/cmd", "pubsub seq msg/s",
               f"pubsub x{window} msg/s", f"CPU µs/msg x{window}"], rows),
        "p50/p99: over all counted rounds' commands; msg/s and CPU: median of the rounds. CPU is this "
        "process's (all threads: glide's Rust core included, and the subscriber's side of pub/sub).",
    ])


def version(name: str) -> str:
    package = {"coredis": "coredis", "glide": "valkey-glide"}.get(name)
    return importlib.metadata.version(package) if package else ""


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.valkey_clients", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5, help="counted rounds (after one warm-up round)")
    p.add_argument("--ops", type=int, default=2000, help="SETs, then as many GETs, per client per round")
    p.add_argument("--messages", type=int, default=10000, help="messages per pub/sub run")
    p.add_argument("--window", type=int, default=32, help="concurrent publishers in the xW pub/sub run")
    a = p.parse_args(argv)
    if min(a.rounds, a.ops, a.messages, a.window) < 1:
        p.error("every count must be at least 1")
    return Options(a.rounds, a.ops, a.messages, a.window)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    started = time.monotonic()
    cores = choose_cores()
    print(banner("Valkey client under Trio: coredis vs valkey-glide"))
    print(machine_header(), flush=True)
    server = start_valkey()
    try:
        where = pin_server(server, cores.server)
        pin_self(cores.client)
        print(f"{where}, bench (and glide's threads) on CPU {cores.client}; "
              f"{server.binary.rsplit('/', 1)[-1]} {server_version(server)}; clients: "
              + ", ".join(f"{n} {version(n)}" for n in CLIENTS))
        print(f"{opts.rounds} rounds (+1 warm-up), clients alternating, order flipped each round; "
              f"per round and client: {opts.ops} SET + {opts.ops} GET ({VALUE_BYTES} B values, one in "
              f"flight), then {opts.messages} pub/sub messages ({MESSAGE_BYTES} B) published "
              f"sequentially and again from {opts.window} concurrent tasks", flush=True)
        samples = trio.run(run, server, opts)
    finally:
        server.close()
    print(summarize(samples, opts.window))
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    return 0


def server_version(server: ValkeyProcess) -> str:
    out = subprocess.run([server.binary, "--version"], capture_output=True, text=True, check=False).stdout
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    raise SystemExit(main())
