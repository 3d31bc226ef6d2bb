"""One process against `--workers 2`: HTTP `GET /kv/{key}` req/s and chat fan-out.

`python -m bench.workers [--cycles 10] [--seconds 2] [--sizes 200] [--rounds 2] [--path /kv/bench]`
(`--path /health`: a request that touches no shared state, how the workers themselves scale).

Variants (all `python -m server`, tracing off):
- 1:      one node, the default memory engine: what `make run` serves
- 2:      `--workers 2`: two processes on one port, a mesh on loopback (replicas 2,
          W 2, R 2: every read asks both workers)
- 2-r1:   the same with read_quorum 1 (R + W still > N: a read is answered by the
          worker's own replica when it is one; both are)

HTTP: every variant up at once, the load (`wrk`, else the Python keep-alive client)
visits them in turn, one `--seconds` slice each per cycle (bench/http_kv.py's method:
this VM's speed drifts, slices seconds apart compare like with like). Fan-out: a
fresh server per run, variants alternating, bench/fanout.py's closed loop (one room,
plain protocol; with workers the members land on both and every message crosses).

On 2 cores the comparison is not clean, and the output says so: the one-process
variant is pinned to the server core with the load generator on the other, but two
workers need both cores, so they share them with the load generator (any CPU) and
the ratio understates what a second core gives when the load comes from elsewhere.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.fanout import measure, messages_for
from bench.http_kv import put_key, total_rate
from bench.http_load import LoadResult, run_python, run_wrk, wrk_path
from bench.procs import EVERY_CPU, Cores, choose_cores, node_env, pin_self, raise_fd_limit, server
from bench.report import banner, median, ratio, table
from server.workers import READY_LINE

VARIANTS = ("1", "2", "2-r1")
_READY = re.compile(READY_LINE.format(count=r"\d+", url=r"(http://\S+)"))
# No WebSocket pings (bench/fanout.py's QUIET): the closed loop answers them late.
QUIET = {"ws_ping_interval": "0"}


@dataclass(frozen=True)
class Options:
    cycles: int
    seconds: float
    connections: int
    client: str       # "wrk" or "python"
    sizes: list[int]  # fan-out room sizes; [] skips fan-out
    rounds: int
    deliveries: int
    path: str  # what the HTTP load requests


def variant_args(variant: str) -> tuple[list[str], dict[str, str]]:
    if variant == "1":
        return [], {}
    return ["--workers", "2"], ({"read_quorum": "1"} if variant == "2-r1" else {})


@contextmanager
def start(variant: str, cores: Cores, **settings: str) -> Iterator[tuple[str, int]]:
    """One variant's server; yields (URL, the pid to report). Workers may run on any CPU
    (not the load generator's alone, which they would inherit from this process)."""
    args, more = variant_args(variant)
    cpu = cores.server if variant == "1" else EVERY_CPU
    with server("server", cpu, node_env("off", **more, **settings), name=f"workers-{variant}",
                args=args) as (child, url):
        if args:  # a worker's listening line came first: wait until they form one cluster
            url = child.wait_for_line(_READY, timeout=40).group(1)
        yield url, child.pid


def load(url: str, opts: Options, cores: Cores) -> LoadResult:
    target = f"{url}{opts.path}"
    if opts.client == "wrk":
        return run_wrk(target, seconds=opts.seconds, connections=opts.connections, threads=2,
                       cpu=cores.client)
    return run_python(target, seconds=opts.seconds, connections=opts.connections)


def http_bench(opts: Options, cores: Cores) -> dict[str, float]:
    slices: dict[str, list[LoadResult]] = {v: [] for v in VARIANTS}
    with ExitStack() as stack:
        urls = {v: stack.enter_context(start(v, cores))[0] for v in VARIANTS}
        for url in urls.values():
            put_key(url)
            load(url, opts, cores)  # warm-up
        for cycle in range(1, opts.cycles + 1):
            for variant in VARIANTS if cycle % 2 else VARIANTS[::-1]:
                slices[variant].append(load(urls[variant], opts, cores))
            print(f"  cycle {cycle:2}: " + "  ".join(
                f"{v} {slices[v][-1].rate:5.0f}" for v in VARIANTS) + " req/s", flush=True)
    errors = sum(r.errors for rs in slices.values() for r in rs)
    totals = {v: total_rate(slices[v]) for v in VARIANTS}
    print(table(["workers", "req/s over all slices", "slice range", "ratio to 1"],
                [[v, f"{totals[v]:.0f}", f"{min(r.rate for r in slices[v]):.0f}-"
                  f"{max(r.rate for r in slices[v]):.0f}", f"{ratio(totals[v], totals['1']):.2f}"]
                 for v in VARIANTS]))
    print(f"{errors} errors in all slices", flush=True)
    return totals


def fanout_bench(opts: Options, cores: Cores) -> None:
    rates: dict[tuple[str, int], list[float]] = {}
    for n in opts.sizes:
        messages = messages_for(n, opts.deliveries)
        for r in range(opts.rounds):
            for variant in VARIANTS[:2]:  # R does not matter to chat
                with start(variant, cores, **QUIET) as (url, pid):
                    parts = urlsplit(url)
                    o = measure(parts.hostname or "127.0.0.1", parts.port or 80, pid, variant, n,
                                messages, mode="closed")
                p = o.phase
                rates.setdefault((variant, n), []).append(p.rate)
                print(f"  round {r + 1} workers={variant:<2} N={n:<5} {p.rate:8.0f} msg/s  "
                      f"p50 {p.latency_ms(50):6.1f} ms  p99 {p.latency_ms(99):6.1f} ms"
                      f"{'  ' + o.note if o.note else ''}", flush=True)
    for n in opts.sizes:
        one, two = median(rates["1", n]), median(rates["2", n])
        print(f"fan-out N={n}: 1 worker {one:.0f} msg/s, 2 workers {two:.0f} msg/s: "
              f"{ratio(two, one):.2f}x")


def parse_args(argv: list[str] | None) -> Options:
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="python -m bench.workers", description=doc.splitlines()[0])
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of HTTP load per slice")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument("--sizes", default="200", help="fan-out room sizes, comma-separated ('' skips)")
    p.add_argument("--rounds", type=int, default=2, help="fan-out runs per variant and size")
    p.add_argument("--deliveries", type=int, default=40_000, help="fan-out deliveries per run")
    p.add_argument("--path", default="/kv/bench", help="what the HTTP load GETs (/health: no shared state)")
    a = p.parse_args(argv)
    client = ("wrk" if wrk_path() else "python") if a.client == "auto" else a.client
    sizes = [int(x) for x in a.sizes.split(",") if x]
    return Options(a.cycles, a.seconds, a.connections, client, sizes, a.rounds, a.deliveries, a.path)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    cores = choose_cores()
    pin_self(cores.client)
    raise_fd_limit()
    print(banner("workers: one process vs --workers 2 (HTTP GET /kv/{key}, chat fan-out)"))
    print(f"{cores.describe()} for the one-process variant. The two workers may run on any CPU: on "
          f"{os.cpu_count()} cores they share one with the load generator, no core is left to the "
          "load, and the ratio understates what a second core gives", flush=True)
    print(f"HTTP GET {opts.path}: {opts.client}, {opts.connections} keep-alive connections, "
          f"{opts.cycles} cycles of {opts.seconds:g}s slices; variants: 1 (memory engine), "
          "2 (mesh, R=2), 2-r1 (mesh, R=1)",
          flush=True)
    totals = http_bench(opts, cores)
    print(f"HTTP GET {opts.path}: 2 workers / 1 = {ratio(totals['2'], totals['1']):.2f}, "
          f"2 workers R=1 / 1 = {ratio(totals['2-r1'], totals['1']):.2f}", flush=True)
    if opts.sizes:
        print(f"fan-out: closed loop, plain protocol, ~{opts.deliveries} deliveries per run, "
              f"{opts.rounds} rounds, fresh server per run", flush=True)
        fanout_bench(opts, cores)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
