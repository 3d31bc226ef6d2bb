"""HTTP `GET /kv/{key}` requests/s on real nodes: tracing on, off, and collector down.

`python -m bench.http_kv [--cycles 30] [--seconds 2]`. One node per variant
(`python -m server`), all pinned to the server core and started at once, each
with a key put; then the load (`wrk`, or the Python keep-alive client when wrk
is missing, pinned to the other core) visits them in turn, one slice of
`--seconds` each, for `--cycles` cycles (the order reversed every other cycle).
Only one node is loaded at a time; the others sit idle.

Why slices and not a fresh node per run: this VM's speed drifts by ±15% from
one two-second window to the next, within one process as much as between
processes. Slices a few seconds apart see the same machine, so each variant's
total over all its slices (and each cycle's paired ratio) compares like with
like. The exporting node's leftover spans (fewer than a batch) may be sent
during another node's slice: at most ~8 ms of CPU per cycle (<0.5%) in the
other variants' disfavour, so on/off is if anything understated.

- on:   OTLP gRPC export to a live receiver (bench.otlp_sink, on the load core)
- off:  tracing off (OTEL_TRACES_EXPORTER=none); metrics still recorded and pushed
- down: the OTLP endpoint is a closed loopback port
- none: no telemetry at all (OTEL_SDK_DISABLED=true: no traces, no metrics), to
        show what the metrics cost on their own (none vs off)
The OTEL_BSP_* settings are left at their defaults. Budget: tracing may cost at
most 10% of throughput, so on/off and down/off should be >= 0.90: the verdict is
the ratio of the variants' total requests over all slices; the median and range
of the per-cycle ratios are printed beside it.
"""

from __future__ import annotations

import argparse
import http.client
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.http_load import LoadResult, run_python, run_wrk, wrk_path
from bench.otlp_sink import RECEIVED
from bench.procs import Child, Cores, choose_cores, node_env, pin_self, server
from bench.report import banner, median, ratio, table
from server.ports import free_port

VARIANTS = ("on", "off", "down", "none")
KEY = "bench"
BUDGET = 0.90


@dataclass(frozen=True)
class Options:
    cycles: int
    seconds: float
    connections: int
    client: str  # "wrk" or "python"


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


def load(url: str, opts: Options, cores: Cores) -> LoadResult:
    target = f"{url}/kv/{KEY}"
    if opts.client == "wrk":
        return run_wrk(target, seconds=opts.seconds, connections=opts.connections, threads=2,
                       cpu=cores.client)
    return run_python(target, seconds=opts.seconds, connections=opts.connections)


def variant_env(variant: str, endpoint: str | None) -> dict[str, str]:
    env = node_env("off" if variant == "none" else "on", endpoint)
    if variant == "off":
        env["OTEL_TRACES_EXPORTER"] = "none"
    return env


@contextmanager
def nodes(cores: Cores) -> Iterator[tuple[dict[str, str], list[int]]]:
    """Every variant's node, started at once: yields ({variant: URL}, a list that
    receives the live receiver's span count once it has stopped)."""
    counted: list[int] = []
    with ExitStack() as stack:
        sink, sink_url = stack.enter_context(
            server("bench.otlp_sink", cores.client, node_env("off"), name="otlp-sink"))
        stack.callback(lambda: counted.append(_received(sink)))
        urls = {}
        for variant in VARIANTS:
            endpoint = {"on": sink_url, "none": None}.get(variant, f"http://127.0.0.1:{free_port()}")
            _node, url = stack.enter_context(
                server("server", cores.server, variant_env(variant, endpoint), name=f"node-{variant}"))
            put_key(url)
            urls[variant] = url
        yield urls, counted


def _received(sink: Child) -> int:
    sink.stop()
    found = RECEIVED.search(sink.final_output or "")
    return int(found.group(1)) if found else -1


def cycle_ratios(slices: dict[str, list[LoadResult]], variant: str) -> list[float]:
    """variant/off within each cycle: slices seconds apart, so the drift cancels."""
    return [ratio(a.rate, b.rate) for a, b in zip(slices[variant], slices["off"], strict=True)]


def total_rate(results: list[LoadResult]) -> float:
    seconds = sum(r.seconds for r in results)
    return sum(r.requests for r in results) / seconds if seconds else 0.0


def summarize(slices: dict[str, list[LoadResult]]) -> str:
    total = {v: total_rate(slices[v]) for v in VARIANTS}
    rows = []
    for v in VARIANTS:
        per_cycle = cycle_ratios(slices, v)
        overall = ratio(total[v], total["off"])
        verdict = "-" if v in ("off", "none") else ("within budget" if overall >= BUDGET else "OVER BUDGET")
        rows.append([v, f"{total[v]:.0f}", f"{min(r.rate for r in slices[v]):.0f}-"
                     f"{max(r.rate for r in slices[v]):.0f}", f"{overall:.3f}",
                     f"{median(per_cycle):.3f} ({min(per_cycle):.2f}-{max(per_cycle):.2f})", verdict])
    lines = [table(["tracing", "req/s over all slices", "slice range", "ratio to off",
                    "per-cycle ratio: median (range)", "10% budget"], rows)]
    on, down = (ratio(total[v], total["off"]) for v in ("on", "down"))
    lines.append(f"on/off = {on:.3f}   down/off = {down:.3f}   "
                 f"(requests over all slices; budget: >= {BUDGET:.2f})")
    lines.append(f"metrics alone: off/none = {ratio(total['off'], total['none']):.3f} "
                 "(tracing off, metrics on, against no telemetry at all)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.http_kv", description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=30)
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of load per slice")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto")
    a = p.parse_args(argv)
    client = ("wrk" if wrk_path() else "python") if a.client == "auto" else a.client
    return Options(a.cycles, a.seconds, a.connections, client)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    cores = choose_cores()
    pin_self(cores.client)
    print(banner("HTTP GET /kv/{key}: tracing on / off / collector down"))
    tool = "wrk -t2" if opts.client == "wrk" else "python keep-alive client"
    print(f"{cores.describe()}; load: {tool}, {opts.connections} keep-alive connections; one node per "
          f"variant, all up at once; {opts.cycles} cycles of one {opts.seconds:g}s slice per variant "
          "(after one warm-up slice each); OTEL_BSP_* defaults", flush=True)
    slices: dict[str, list[LoadResult]] = {v: [] for v in VARIANTS}
    with nodes(cores) as (urls, counted):
        for variant in VARIANTS:
            load(urls[variant], opts, cores)  # warm-up
        for cycle in range(1, opts.cycles + 1):
            order = VARIANTS if cycle % 2 else VARIANTS[::-1]
            for variant in order:
                slices[variant].append(load(urls[variant], opts, cores))
            print(f"  cycle {cycle:2}: " + "  ".join(
                f"{v} {slices[v][-1].rate:5.0f}" for v in VARIANTS) + " req/s", flush=True)
    errors = sum(r.errors for rs in slices.values() for r in rs)
    print(f"{counted[0] if counted else '?'} spans reached the live receiver; {errors} errors in all slices",
          flush=True)
    print(summarize(slices), flush=True)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
