"""`python -m bench.quick` (`make bench-quick`): issue 13's headline figures in under two
minutes, to check a change against its targets. Each benchmark runs short (one round,
fewer cycles), as its own process; their whole output goes to test-output/bench-quick.log
and the figures that matter are picked from it and printed with their targets.

Short runs are noisier than `make bench` (HTTP: 4 cycles, not 30): a figure near its
target needs the full benchmark before it is believed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.procs import REPO_ROOT

LOG = REPO_ROOT / "test-output" / "bench-quick.log"
NUMBER = r"([0-9.]+)"


@dataclass(frozen=True)
class Step:
    module: str
    args: tuple[str, ...]
    headline: Callable[[str], str]  # the step's output -> its headline line(s)


def _search(pattern: str, text: str) -> re.Match[str] | None:
    return re.search(pattern, text, re.MULTILINE)


def fanout_headline(out: str) -> str:
    ratio = _search(rf"ours/naive at N=1000: throughput {NUMBER}x", out)
    ours = _search(rf"^ours\s+1000\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s*$", out)
    if not ratio or not ours:
        return "fan-out: no figures (see the log)"
    complete = "INCOMPLETE" not in out
    return (f"fan-out N=1000, closed loop: {float(ratio.group(1)):.2f}x naive Quart-Trio (target >= 3x), "
            f"p99 {float(ours.group(3)):.1f} ms (<= 20 ms), "
            f"{'every message once, in order' if complete else 'MESSAGES LOST OR OUT OF ORDER'}")


def http_headline(out: str) -> str:
    found = _search(rf"on/off = {NUMBER}\s+down/off = {NUMBER}", out)
    if not found:
        return "HTTP tracing cost: no figures (see the log)"
    return (f"HTTP GET /kv tracing on/off {found.group(1)}, down/off {found.group(2)} "
            "(target >= 0.90 each; 4 short cycles: noisy)")


def memory_headline(out: str) -> str:
    # The summary table's rows: variant, idle RSS MiB, KiB/connection, ratio vs naive.
    rows = {m.group(1): float(m.group(3)) for m in re.finditer(
        rf"^(ours|ours\+tracing|naive)\s+{NUMBER}\s+{NUMBER}\s+(?:{NUMBER}|-)\s*$", out, re.MULTILINE)}
    if "ours+tracing" not in rows:
        return "idle WebSocket: no figures (see the log)"
    others = ", ".join(f"{v} {rows[v]:.1f}" for v in ("ours", "naive") if v in rows)
    return (f"idle WebSocket at 10,000 connections: {rows['ours+tracing']:.1f} KiB traced (target <= 32)"
            + (f"; {others}" if others else ""))


def kv_headline(out: str) -> str:
    lines = [line.removeprefix("verdict ") for line in out.splitlines() if line.startswith("verdict ")]
    return "\n".join(f"KV {line}" for line in lines) or "KV on three nodes: no verdict (see the log)"


STEPS = (
    Step("bench.fanout", ("--rounds", "1", "--sizes", "1000", "--deliveries", "50000",
                          "--isolation-n", "0"), fanout_headline),
    Step("bench.http_kv", ("--cycles", "4", "--seconds", "1"), http_headline),
    Step("bench.ws_memory", ("--connections", "10000", "--variants", "ours+tracing"), memory_headline),
    Step("bench.kv_cluster", ("--seconds", "3"), kv_headline),
)


def main(argv: list[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print("usage: python -m bench.quick (no options)", file=sys.stderr)
        return 2
    started = time.monotonic()
    LOG.parent.mkdir(exist_ok=True)
    headlines: list[str] = []
    status = 0
    with LOG.open("w") as log:
        for step in STEPS:
            t0 = time.monotonic()
            print(f"{step.module} {' '.join(step.args)} ...", end=" ", flush=True)
            run = subprocess.run([sys.executable, "-m", step.module, *step.args], cwd=REPO_ROOT,
                                 capture_output=True, text=True, timeout=300, check=False)
            log.write(f"$ python -m {step.module} {' '.join(step.args)}\n{run.stdout}{run.stderr}\n")
            print(f"{time.monotonic() - t0:.0f}s{'' if run.returncode == 0 else f' (exit {run.returncode})'}",
                  flush=True)
            status |= run.returncode
            headlines.append(step.headline(run.stdout))
    print(f"\nheadline figures (issue 13's targets; whole output in {LOG.relative_to(REPO_ROOT)}):")
    print("\n".join(headlines))
    print(f"done in {time.monotonic() - started:.0f}s", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
