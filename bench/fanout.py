"""Chat fan-out in one room: our server against a naive Quart-Trio broadcaster.

`python -m bench.fanout [--rounds 3] [--sizes 200,1000] [--mode closed|bursts] [--idle K]
[--profile DIR]` (DIR: py-spy profiles of our server, bench/pyspy.py).
A room of N members (1 sender + N-1 receivers, plain protocol `/ws?username=...`);
every message carries a sequence number and its send time (CLOCK_MONOTONIC).

- closed (default; issue 13's pattern): the next message is sent once a watcher,
  the member that joined last, has the previous one (bench/closed_loop.py); at
  the end every member must have every message once, in order.
- bursts: M messages in bursts of 10 with at most 20 in flight (until every
  receiver has it); every receiver counts deliveries, 50 record latency.

    delivered msg/s = deliveries / (last delivery - first send)

`--idle K` adds K idle connections (JSON protocol, in no room) to our server
before the room is formed: the "10,000 idle + 1,000 active" case (ours only, as
the naive server has no rooms: its idle members would be receivers).

Variants alternate (ours naive ours naive ...), a fresh server per run, server
on one core and this client on the other. Tracing is off in our server (the
naive one has none) unless --tracing on, so the figures compare fan-out designs.

Slow-consumer isolation (ours only): the same room plus one member that
connects with a 4 KiB receive buffer and never reads; a 3.6 MB prefill first
fills its kernel buffers so its server-side queue is full while measuring.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from bench.closed_loop import ClosedLoop, ClosedPhase
from bench.fanout_driver import FanoutDriver, Phase
from bench.procs import (
    Cores,
    child_env,
    choose_cores,
    cpu_seconds,
    node_env,
    pin_self,
    raise_fd_limit,
    server,
)
from bench.pyspy import recording, summarize
from bench.report import banner, median, ratio, table
from bench.ws_client import OP_CLOSE, OP_TEXT, WsConn, close_all, open_many, parse_frames

BURST, WINDOW = 10, 20  # defaults: send 10 at a time, at most 20 not yet delivered to all
WARMUP_MESSAGES = 20
PREFILL_MESSAGES, PREFILL_PAD = 240, 15000  # 3.6 MB: more than a stalled socket's kernel buffers


# No WebSocket pings from our server: the closed loop reads most members in bulk and
# would answer them late (the naive server sends none either).
QUIET = {"ws_ping_interval": "0"}

# A run lasts under a second (fan-out writes directly since day 6), far less than the
# default slow_consumer_timeout: shorten it so the stalled member is seen being closed
# (the policy acts when a broadcast finds its queue full, so within the run).
ISOLATION_SLOW_TIMEOUT = "0.2"


@dataclass(frozen=True)
class Options:
    rounds: int
    sizes: list[int]
    deliveries: int  # target deliveries per measured run (M = deliveries / (N-1))
    isolation_n: int
    tracing: str
    burst: int
    window: int
    gc_threshold: str | None  # our server's WEBSERVER_GC_THRESHOLDS; None = its configured default
    mode: str  # "closed" or "bursts"
    idle: int  # idle connections besides the room (ours only)
    profile: Path | None  # py-spy profiles of ours' first round go here


@dataclass(frozen=True)
class Outcome:
    variant: str
    n: int
    phase: Phase | ClosedPhase
    server_cpu: float  # fraction of one core used during the measured phase
    client_cpu: float
    note: str = ""


@contextmanager
def start(variant: str, cores: Cores, tracing: str, gc_threshold: str | None = None,
          **settings: str) -> Iterator[tuple[str, int, int]]:
    if variant == "naive":
        ctx = server("bench.naive_server", cores.server, child_env(), name="naive")
    else:
        # Tracing "on" exports to a closed port: no receiver process to perturb the client core.
        env = node_env(tracing, None if tracing == "off" else "http://127.0.0.1:9", **settings)
        if gc_threshold is not None:
            env["WEBSERVER_GC_THRESHOLDS"] = gc_threshold
        ctx = server("server", cores.server, env, name="node")
    with ctx as (child, url):
        parts = urlsplit(url)
        yield parts.hostname or "127.0.0.1", parts.port or 80, child.pid


def drain_stalled(conn: WsConn, tag: str, seconds: float = 3.0) -> tuple[int, int | None]:
    """Read the stalled member at last: (messages it got, close code if the server closed it)."""
    conn.sock.settimeout(0.5)
    marker = f'"text":"{tag}:'.encode()
    got, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = conn.sock.recv(262144)
        except (TimeoutError, OSError):
            break
        if not data:
            break
        conn.buf += data
        for op, payload in parse_frames(conn):
            if op == OP_TEXT and marker in payload:
                got += 1
            elif op == OP_CLOSE:
                return got, int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return got, None


def measure(host: str, port: int, pid: int, variant: str, n: int, messages: int, *,
            mode: str = "bursts", burst: int = BURST, window: int = WINDOW,
            stalled_member: bool = False, prefill: bool = False, idle: int = 0,
            profile: Path | None = None) -> Outcome:
    tag = os.urandom(4).hex()
    conns: list[WsConn] = []
    try:
        if idle:
            conns += open_many(host, port, [f"/ws?username=idle{i}&protocol=json" for i in range(idle)],
                               batch=200)
        room = open_many(host, port, ["/ws?username=sender"])
        room += open_many(host, port, [f"/ws?username=r{i}" for i in range(n - 1)])
        conns += room
        stalled = None
        if stalled_member:
            stalled = open_many(host, port, ["/ws?username=stalled"], rcvbuf=4096)[0]
            conns.append(stalled)
        # Both modes first make sure every member is in the room (probes until all have one).
        # The stalled member is no receiver of the driver's: nothing reads it until drain_stalled.
        driver = FanoutDriver(room[0], room[1:n], tag)
        closed = ClosedLoop(room[0], room[1:n], tag) if mode == "closed" else None
        try:
            driver.sync()
            if prefill:
                driver.run("p", PREFILL_MESSAGES, burst=burst, window=window, pad=PREFILL_PAD)
            phase: Phase | ClosedPhase
            if closed is not None:
                closed.run("w", WARMUP_MESSAGES)
            else:
                driver.run("w", WARMUP_MESSAGES, burst=burst, window=window)
            with recording(pid, profile) if profile else nullcontext():
                cpu0, mine0, wall0 = cpu_seconds(pid), time.process_time(), time.monotonic()
                if closed is not None:
                    phase = closed.run("m", messages)
                else:
                    phase = driver.run("m", messages, burst=burst, window=window)
                wall = time.monotonic() - wall0
            server_cpu = (cpu_seconds(pid) - cpu0) / wall
            client_cpu = (time.process_time() - mine0) / wall
        finally:
            driver.close()
            if closed is not None:
                closed.close()
        note = ""
        if isinstance(phase, ClosedPhase):
            if phase.stalled or phase.lost or phase.out_of_order:
                note = (f"INCOMPLETE: {phase.lost} deliveries lost, {phase.out_of_order} out of order"
                        f"{' (stalled)' if phase.stalled else ''}")
        elif phase.stalled:
            note = f"STALLED: {phase.completed}/{messages} messages reached everyone"
        if stalled is not None:
            got, code = drain_stalled(stalled, tag)
            note += ("; " if note else "") + (f"stalled member got {got} of {driver.total_sent} messages"
                     f"{'' if code is None else f', then close {code}'}")
        return Outcome(variant, n, phase, server_cpu, client_cpu, note)
    finally:
        close_all(conns)


def messages_for(n: int, deliveries: int) -> int:
    return max(50, round(deliveries / (n - 1) / BURST) * BURST)


def describe(o: Outcome) -> str:
    p = o.phase
    deliveries = p.delivered if isinstance(p, ClosedPhase) else p.deliveries
    return (f"{o.variant:<12} N={o.n:<5} {p.rate:9.0f} msg/s  p50 {p.latency_ms(50):7.1f} ms  "
            f"p99 {p.latency_ms(99):7.1f} ms  ({deliveries} deliveries of {p.sent} messages "
            f"in {p.seconds:.2f}s; CPU server {o.server_cpu:.0%} client {o.client_cpu:.0%})"
            f"{'  ' + o.note if o.note else ''}")


def summary_rows(outcomes: list[Outcome], variants: tuple[str, ...], sizes: list[int]
                 ) -> dict[tuple[str, int], tuple[float, float, float]]:
    out = {}
    for n in sizes:
        for v in variants:
            ps = [o.phase for o in outcomes if o.variant == v and o.n == n]
            out[v, n] = (median([p.rate for p in ps]), median([p.latency_ms(50) for p in ps]),
                         median([p.latency_ms(99) for p in ps]))
    return out


def render(outcomes: list[Outcome], variants: tuple[str, ...], sizes: list[int], label: str) -> str:
    """The medians per variant and size, then the first variant against the second."""
    med = summary_rows(outcomes, variants, sizes)
    rows = [[v, str(n), f"{med[v, n][0]:.0f}", f"{med[v, n][1]:.1f}", f"{med[v, n][2]:.1f}"]
            for n in sizes for v in variants]
    lines = [table(["variant", "N", "delivered msg/s", "p50 ms", "p99 ms"], rows)]
    a, b = variants[:2]
    for n in sizes:
        lines.append(f"{label} at N={n}: throughput {ratio(med[a, n][0], med[b, n][0]):.2f}x, "
                     f"p50 {ratio(med[a, n][1], med[b, n][1]):.2f}x, "
                     f"p99 {ratio(med[a, n][2], med[b, n][2]):.2f}x")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sizes", default="200,1000", help="room sizes N, comma-separated")
    p.add_argument("--deliveries", type=int, default=100_000, help="target deliveries per run")
    p.add_argument("--isolation-n", type=int, default=200,
                   help="room size for the stalled-member test; 0 skips it")
    p.add_argument("--tracing", choices=("off", "on"), default="off")
    p.add_argument("--burst", type=int, default=BURST, help="messages sent back to back")
    p.add_argument("--gc-threshold", default=None, metavar="G0,G1,G2",
                   help="our server's WEBSERVER_GC_THRESHOLDS (default: its own setting; '' = Python's)")
    p.add_argument("--window", type=int, default=WINDOW,
                   help="bursts: messages in flight at most (sent, not yet delivered to every receiver)")
    p.add_argument("--mode", choices=("closed", "bursts"), default="closed",
                   help="closed: next message once the last member has the previous one")
    p.add_argument("--idle", type=int, default=0, metavar="K",
                   help="also run ours with K idle connections besides the room (variant ours+idle)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="py-spy the server through ours' measured runs of round 1; raw stacks "
                        "to DIR/VARIANT-NN.raw, top functions printed")
    a = p.parse_args(argv)
    if a.profile:
        a.profile.mkdir(parents=True, exist_ok=True)
    if not 0 < a.burst <= a.window:
        p.error("need 0 < burst <= window")
    return Options(a.rounds, [int(x) for x in a.sizes.split(",")], a.deliveries, a.isolation_n,
                   a.tracing, a.burst, a.window, a.gc_threshold, a.mode, a.idle, a.profile)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    cores = choose_cores()
    pin_self(cores.client)
    raise_fd_limit()
    print(banner("WebSocket chat fan-out: ours vs naive Quart-Trio"))
    pattern = ("closed loop: the next message once the last member to join has the previous one; "
               "latency on it and 20 more receivers" if opts.mode == "closed" else
               f"bursts of {opts.burst}, at most {opts.window} messages in flight; "
               "latency sampled on 50 receivers")
    print(f"{cores.describe()}; {pattern}; ~{opts.deliveries} deliveries per run; "
          f"tracing in ours: {opts.tracing}"
          f"{'' if opts.gc_threshold is None else f'; gc thresholds {opts.gc_threshold!r} in ours'}; "
          f"{opts.rounds} rounds, variants alternating, "
          "fresh server per run", flush=True)
    outcomes: list[Outcome] = []
    variants = ("ours", "naive", "ours+idle") if opts.idle else ("ours", "naive")
    for rnd in range(1, opts.rounds + 1):
        for n in opts.sizes:
            for variant in variants:
                profile = (opts.profile / f"{variant}-N{n}.raw"
                           if opts.profile and rnd == 1 and variant != "naive" else None)
                with start(variant.split("+")[0], cores, opts.tracing, opts.gc_threshold,
                           **QUIET) as (host, port, pid):
                    o = measure(host, port, pid, variant, n, messages_for(n, opts.deliveries),
                                mode=opts.mode, burst=opts.burst, window=opts.window,
                                idle=opts.idle if variant == "ours+idle" else 0, profile=profile)
                outcomes.append(o)
                print(f"  round {rnd} {describe(o)}", flush=True)
                if profile:
                    print(summarize(profile), flush=True)
    print(render(outcomes, variants, opts.sizes, "ours/naive"), flush=True)
    if opts.idle:
        print(render(outcomes, ("ours+idle", "naive"), opts.sizes, f"ours+{opts.idle} idle/naive")
              .splitlines()[-len(opts.sizes)], flush=True)
    if opts.isolation_n:
        n = opts.isolation_n
        prefill_mb = PREFILL_MESSAGES * PREFILL_PAD / 1e6
        print(f"\nslow-consumer isolation (ours, N={n} + 1 member that never reads; "
              f"both variants get the same {prefill_mb:.1f} MB prefill; slow_consumer_timeout "
              f"{ISOLATION_SLOW_TIMEOUT}s so the policy closes it within a run)", flush=True)
        iso: list[Outcome] = []
        for rnd in range(1, opts.rounds + 1):
            for variant, stalled in (("ours", False), ("ours+stalled", True)):
                with start("ours", cores, opts.tracing, opts.gc_threshold,
                           slow_consumer_timeout=ISOLATION_SLOW_TIMEOUT) as (host, port, pid):
                    o = measure(host, port, pid, variant, n, messages_for(n, opts.deliveries),
                                burst=opts.burst, window=opts.window, stalled_member=stalled,
                                prefill=True)
                iso.append(o)
                print(f"  round {rnd} {describe(o)}", flush=True)
        print(render(iso, ("ours+stalled", "ours"), [n], "with/without stalled member"), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
