"""Benchmarks: `python -m bench` runs them all; each module also runs alone.

- `bench.http_kv`: HTTP `GET /kv/{key}` requests/s, tracing on / off / collector down.
- `bench.ab`: one HTTP figure, this checkout against another commit (did a change slow the node?).
- `bench.fanout`: chat fan-out in one room, our server against a naive Quart-Trio one.
- `bench.ws_memory`: server RSS per idle WebSocket connection.

The machine has 2 cores: servers run on one (`taskset -c`), load generators and
helper processes on the other; compared variants alternate within one run and
medians and ratios are reported. Loopback only; every run is bounded in time.
"""
