"""`python -m bench` (`make bench`): every benchmark in turn, after a header naming the machine."""

from __future__ import annotations

import sys
import time

from bench import engines, fanout, http_kv, kv_cluster, workers, ws_memory
from bench.report import machine_header


def main(argv: list[str] | None = None) -> int:
    if argv if argv is not None else sys.argv[1:]:
        print("usage: python -m bench   (run one benchmark with options: python -m bench.http_kv --help, "
              "bench.fanout, bench.ws_memory, bench.engines, bench.kv_cluster, bench.workers; "
              "the headline figures in under two minutes: python -m bench.quick)", file=sys.stderr)
        return 2
    started = time.monotonic()
    print("webserver benchmarks", flush=True)
    print(machine_header(), flush=True)
    status = 0
    for bench in (http_kv, fanout, ws_memory, engines, kv_cluster, workers):
        status |= bench.main([])
    print(f"\nall benchmarks done in {time.monotonic() - started:.0f}s", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
