"""Server RSS per idle WebSocket connection: ours against the naive Quart-Trio server.

`python -m bench.ws_memory [--connections 10000] [--rounds 1] [--variants ours,ours+tracing,naive]`
(issue 13's target is per connection at 10,000, where the node's fixed costs, such as
its buffer of the last 1,000 finished spans, weigh least). Each run starts a
fresh server, lets it settle, reads VmRSS from /proc/PID/status, opens the
connections (plain protocol, `/ws?username=...`, never sending), lets them
settle, reads VmRSS again and checks that every connection is still open.

    KiB per connection = (RSS after - RSS before) / connections

Variants alternate: ours with tracing off, ours with tracing on (exporting to a
live OTLP receiver: each open connection holds its connection span), naive.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.procs import (
    Cores,
    check_fd_room,
    child_env,
    choose_cores,
    node_env,
    pin_self,
    raise_fd_limit,
    rss_kib,
    server,
)
from bench.report import banner, median, ratio, table
from bench.ws_client import WsConn, close_all, open_many

VARIANTS = ("ours", "ours+tracing", "naive")


@dataclass(frozen=True)
class Sample:
    variant: str
    before_kib: int
    after_kib: int
    connections: int
    alive: int

    @property
    def per_conn_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.connections


@contextmanager
def start(variant: str, cores: Cores) -> Iterator[tuple[str, int, int]]:
    with ExitStack() as stack:
        if variant == "naive":
            child, url = stack.enter_context(server("bench.naive_server", cores.server, child_env(),
                                                    name="naive"))
        else:
            endpoint = None
            if variant == "ours+tracing":
                _sink, endpoint = stack.enter_context(
                    server("bench.otlp_sink", cores.client, node_env("off"), name="otlp-sink"))
            env = node_env("on" if endpoint else "off", endpoint)
            child, url = stack.enter_context(server("server", cores.server, env, name="node"))
        parts = urlsplit(url)
        yield parts.hostname or "127.0.0.1", parts.port or 80, child.pid


def still_open(conns: list[WsConn]) -> int:
    """Connections the server has not closed (an idle plain client is sent nothing)."""
    alive = 0
    for c in conns:
        try:
            alive += 1 if c.sock.recv(65536) else 0  # data: open (history or the like)
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def measure(variant: str, cores: Cores, count: int, settle: float) -> Sample:
    with start(variant, cores) as (host, port, pid):
        check_fd_room(count)  # both ends hold one socket per connection
        check_fd_room(count, pid)
        time.sleep(settle)
        before = rss_kib(pid)
        conns = open_many(host, port, [f"/ws?username=idle{i}" for i in range(count)])
        try:
            time.sleep(settle)
            after = rss_kib(pid)
            alive = still_open(conns)
        finally:
            close_all(conns)
    return Sample(variant, before, after, count, alive)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ws_memory", description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated, of " + ", ".join(VARIANTS))
    p.add_argument("--settle", type=float, default=2.0, help="seconds before each RSS reading")
    args = p.parse_args(argv)
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    if not variants:
        p.error(f"--variants: none of {', '.join(VARIANTS)}")
    cores = choose_cores()
    pin_self(cores.client)
    raise_fd_limit()
    print(banner("Server RSS per idle WebSocket connection"))
    print(f"{cores.describe()}; {args.connections} idle plain-protocol connections per run, "
          f"{args.settle:g}s settle before each VmRSS reading; {args.rounds} rounds, variants "
          "alternating; fresh server per run", flush=True)
    samples: list[Sample] = []
    for rnd in range(1, args.rounds + 1):
        for variant in variants:
            s = measure(variant, cores, args.connections, args.settle)
            samples.append(s)
            print(f"  round {rnd} {variant:<13} RSS {s.before_kib / 1024:6.1f} -> "
                  f"{s.after_kib / 1024:6.1f} MiB  {s.per_conn_kib:5.1f} KiB/connection  "
                  f"({s.alive}/{s.connections} open)", flush=True)
    med = {v: median([s.per_conn_kib for s in samples if s.variant == v]) for v in variants}
    base = {v: median([s.before_kib / 1024 for s in samples if s.variant == v]) for v in variants}
    rows = [[v, f"{base[v]:.1f}", f"{med[v]:.1f}",
             f"{ratio(med[v], med['naive']):.2f}" if "naive" in med else "-"] for v in variants]
    print(table(["variant", "idle RSS MiB", "KiB/connection", "ratio vs naive"], rows), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
