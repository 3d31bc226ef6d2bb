"""Benchmarks: `python -m bench` runs them all; each module also runs alone.

- `bench.http_kv`: HTTP `GET /kv/{key}` requests/s, tracing on / off / collector down.
- `bench.ab`: one HTTP figure, this checkout against another commit (did a change slow the node?).
- `bench.fanout`: chat fan-out in one room, our server against a naive Quart-Trio one.
  `--mode closed` (default): issue 13's closed loop; `--profile DIR`: py-spy of our server.
- `bench.ws_memory`: server RSS per idle WebSocket connection.
- `bench.engines`: KV and chat on three nodes, mesh against valkey.
- `bench.kv_cluster`: KV on three nodes at an open-loop 1,000 ops/s against one node.
- `bench.workers`: one port served by 1 and by 2 worker processes, HTTP and chat.
- `bench.quick` (`make bench-quick`): issue 13's headline figures in under two minutes.

The machine has 2 cores: servers run on one (`taskset -c`), load generators and
helper processes on the other; compared variants alternate within one run and
medians and ratios are reported. Loopback only; every run is bounded in time.
"""
