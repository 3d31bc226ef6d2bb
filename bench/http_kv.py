"""HTTP `GET /kv/{key}` requests/s on a real node: tracing on, off, and collector down.

`python -m bench.http_kv [--rounds 11] [--seconds 3]`. Each run starts a fresh
node (`python -m server`) pinned to the server core, puts a key, warms up, then
measures with `wrk` (or the Python keep-alive client when wrk is missing) pinned
to the other core. Variants alternate (on off down on off down ...):

- on:   OTLP gRPC export to a live receiver (bench.otlp_sink, on the load core)
- off:  tracing off (OTEL_TRACES_EXPORTER=none); metrics still recorded and pushed
- down: the OTLP endpoint is a closed loopback port
- none: no telemetry at all (OTEL_SDK_DISABLED=true: no traces, no metrics), to
        show what the metrics cost on their own (none vs off)
The OTEL_BSP_* settings are left at their defaults. Budget: tracing may cost at
most 10% of throughput, so on/off and down/off should be >= 0.90; the verdict
uses the median over rounds of each round's own ratio (see paired_ratios).
"""

from __future__ import annotations

import argparse
import http.client
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.http_load import LoadResult, run_python, run_wrk, wrk_path
from bench.otlp_sink import RECEIVED
from bench.procs import Cores, choose_cores, free_port, node_env, pin_self, server
from bench.report import banner, median, ratio, table

VARIANTS = ("on", "off", "down", "none")
KEY = "bench"
BUDGET = 0.90


@dataclass(frozen=True)
class Options:
    rounds: int
    seconds: float
    warmup: float
    connections: int
    client: str  # "wrk" or "python"


@dataclass(frozen=True)
class Run:
    variant: str
    load: LoadResult
    spans: int | None  # spans the live receiver got, for "on"


def put_key(url: str) -> None:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        body = json.dumps({"key": KEY, "value": "x" * 64})
        conn.request("POST", "/kv", body, {"Content-Type": "application/json"})
        answer = conn.getresponse()
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"POST /kv answered {answer.status}")
    finally:
        conn.close()


def load(url: str, opts: Options, seconds: float, cores: Cores) -> LoadResult:
    target = f"{url}/kv/{KEY}"
    if opts.client == "wrk":
        return run_wrk(target, seconds=seconds, connections=opts.connections, threads=2, cpu=cores.client)
    return run_python(target, seconds=seconds, connections=opts.connections)


@contextmanager
def collector(variant: str, cores: Cores) -> Iterator[tuple[str | None, list[int]]]:
    """Yields (endpoint or None, a list that receives the span count after the sink stops)."""
    counted: list[int] = []
    if variant == "none":
        yield None, counted
    elif variant in ("down", "off"):
        yield f"http://127.0.0.1:{free_port()}", counted
    else:
        sink = None
        try:
            with server("bench.otlp_sink", cores.client, node_env("off"), name="otlp-sink") as (sink, url):
                yield url, counted
        finally:
            if sink is not None and sink.final_output and (m := RECEIVED.search(sink.final_output)):
                counted.append(int(m.group(1)))


def run_once(variant: str, opts: Options, cores: Cores) -> Run:
    with collector(variant, cores) as (endpoint, counted):
        env = node_env("off" if variant == "none" else "on", endpoint)
        if variant == "off":
            env["OTEL_TRACES_EXPORTER"] = "none"
        with server("server", cores.server, env, name=f"node-{variant}") as (_node, url):
            put_key(url)
            load(url, opts, opts.warmup, cores)
            result = load(url, opts, opts.seconds, cores)
    return Run(variant, result, counted[0] if counted else None)


def paired_ratios(runs: list[Run], variant: str) -> list[float]:
    """variant/off within each round: the runs of a round are adjacent in time, so
    the VM's slow drift (±8% between minutes here) cancels out of each ratio."""
    rounds = [runs[i:i + len(VARIANTS)] for i in range(0, len(runs), len(VARIANTS))]
    out = []
    for group in rounds:
        rate = {r.variant: r.load.rate for r in group}
        if variant in rate and "off" in rate:
            out.append(ratio(rate[variant], rate["off"]))
    return out


def summarize(runs: list[Run]) -> str:
    rates = {v: [r.load.rate for r in runs if r.variant == v] for v in VARIANTS}
    med = {v: median(rates[v]) for v in VARIANTS}
    rows = []
    for v in VARIANTS:
        paired = median(paired_ratios(runs, v)) if v != "off" else 1.0
        verdict = "-" if v in ("off", "none") else ("within budget" if paired >= BUDGET else "OVER BUDGET")
        rows.append([v, " ".join(f"{x:.0f}" for x in rates[v]), f"{med[v]:.0f}",
                     f"{ratio(med[v], med['off']):.3f}", f"{paired:.3f}", verdict])
    lines = [table(["tracing", "req/s per run", "median req/s", "ratio of medians",
                    "median paired ratio", "10% budget"], rows)]
    on, down = (median(paired_ratios(runs, v)) for v in ("on", "down"))
    lines.append(f"on/off = {on:.3f}   down/off = {down:.3f}   (median of per-round ratios; "
                 f"budget: >= {BUDGET:.2f})")
    lines.append(f"metrics alone: off/none = {1 / median(paired_ratios(runs, 'none')):.3f} "
                 "(tracing off, metrics on, against no telemetry at all)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.http_kv", description=__doc__.splitlines()[0])
    # This VM varies ~±8% minute to minute: many short rounds, compared within each round.
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    a = p.parse_args(argv)
    client = ("wrk" if wrk_path() else "python") if a.client == "auto" else a.client
    return Options(a.rounds, a.seconds, a.warmup, a.connections, client)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    cores = choose_cores()
    pin_self(cores.client)
    print(banner("HTTP GET /kv/{key}: tracing on / off / collector down"))
    tool = "wrk -t2" if opts.client == "wrk" else "python keep-alive client"
    print(f"{cores.describe()}; load: {tool}, {opts.connections} keep-alive connections, "
          f"{opts.warmup:g}s warm-up + {opts.seconds:g}s measured per run, {opts.rounds} rounds, "
          f"variants alternating; fresh node per run; OTEL_BSP_* defaults", flush=True)
    runs: list[Run] = []
    for rnd in range(1, opts.rounds + 1):
        for variant in VARIANTS:
            run = run_once(variant, opts, cores)
            runs.append(run)
            extra = f", {run.spans} spans reached the receiver" if run.spans is not None else ""
            print(f"  round {rnd} {variant:<4}: {run.load.rate:8.0f} req/s "
                  f"({run.load.requests} requests in {run.load.seconds:.2f}s, "
                  f"{run.load.errors} errors{extra})", flush=True)
    print(summarize(runs), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
