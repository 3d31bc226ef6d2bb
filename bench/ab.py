"""A/B: this checkout's node against another commit's, HTTP `GET /kv/{key}` req/s.

`python -m bench.ab --base COMMIT [--variant on|off|down] [--cycles 16]`. The base
commit is checked out into a temporary clone; one node from each checkout runs
pinned to the server core with the same settings, and wrk (or the Python client)
loads them in alternating two-second slices, so both see the same machine (this
VM drifts ±15% between windows). Prints each cycle and `this/base` over all
slices: the answer to "did this change make the node slower?".
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.http_kv import Options, load, put_key, total_rate, variant_env
from bench.http_load import LoadResult, wrk_path
from bench.procs import REPO_ROOT, choose_cores, node_env, pin_self, server
from bench.report import banner, ratio
from server.ports import free_port


def checkout(commit: str, into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(into)], check=True, timeout=120)
    subprocess.run(["git", "-C", str(into), "checkout", "-q", commit], check=True, timeout=60)
    return into


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    p.add_argument("--base", required=True, help="the commit to compare against (e.g. HEAD~3)")
    p.add_argument("--variant", choices=("on", "off", "down"), default="on")
    p.add_argument("--cycles", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    opts = Options(a.cycles, a.seconds, 16, "wrk" if wrk_path() else "python")
    cores = choose_cores()
    pin_self(cores.client)
    print(banner(f"A/B against {a.base}: GET /kv/{{key}}, tracing {a.variant}"))
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp, ExitStack() as stack:
        roots = {"this": REPO_ROOT, "base": checkout(a.base, Path(tmp) / "base")}
        endpoint = f"http://127.0.0.1:{free_port()}"  # closed: the "down" collector
        if a.variant == "on":
            _sink, endpoint = stack.enter_context(
                server("bench.otlp_sink", cores.client, node_env("off"), name="otlp-sink"))
        urls = {}
        for name, root in roots.items():
            _node, urls[name] = stack.enter_context(
                server("server", cores.server, variant_env(a.variant, endpoint), name=name, cwd=root))
            put_key(urls[name])
            load(urls[name], opts, cores)  # warm-up
        slices: dict[str, list[LoadResult]] = {name: [] for name in roots}
        for cycle in range(1, a.cycles + 1):
            for name in (("this", "base") if cycle % 2 else ("base", "this")):
                slices[name].append(load(urls[name], opts, cores))
            print(f"  cycle {cycle:2}: " + "  ".join(f"{n} {slices[n][-1].rate:5.0f}" for n in roots)
                  + " req/s", flush=True)
    this, base = total_rate(slices["this"]), total_rate(slices["base"])
    errors = sum(r.errors for rs in slices.values() for r in rs)
    print(f"this {this:.0f} req/s, base {base:.0f} req/s: this/base = {ratio(this, base):.3f} "
          f"({errors} errors)", flush=True)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
