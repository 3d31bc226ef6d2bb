"""bench/quick.py picks the headline figures out of each benchmark's printed output
(samples below are lines the benchmarks printed)."""

from __future__ import annotations

from bench.quick import fanout_headline, http_headline, kv_headline, memory_headline

FANOUT = """\
variant     N  delivered msg/s  p50 ms  p99 ms
-------  ----  ---------------  ------  ------
ours     1000            60266     8.1    16.6
naive    1000            15967    56.0   101.3
ours/naive at N=1000: throughput 3.77x, p50 0.14x, p99 0.16x
"""

MEMORY = """\
variant       idle RSS MiB  KiB/connection  ratio vs naive
------------  ------------  --------------  --------------
ours                  51.0            36.3            0.98
ours+tracing          65.7            40.3            1.09
naive                 42.9            37.1            1.00
"""


def test_fanout_ratio_p99_and_completeness() -> None:
    line = fanout_headline(FANOUT)
    assert "3.77x naive" in line and "p99 16.6 ms" in line and "every message once" in line
    lost = FANOUT + "  round 1 ours N=1000 ... INCOMPLETE: 3 deliveries lost, 0 out of order\n"
    assert "LOST" in fanout_headline(lost)
    assert "no figures" in fanout_headline("")


def test_http_ratios() -> None:
    out = "on/off = 0.989   down/off = 0.934   (requests over all slices; budget: >= 0.90)\n"
    assert "on/off 0.989, down/off 0.934" in http_headline(out)
    assert "no figures" in http_headline("on/off = ?")


def test_memory_takes_kib_per_connection_not_rss() -> None:
    line = memory_headline(MEMORY)
    assert "40.3 KiB traced" in line and "ours 36.3" in line and "naive 37.1" in line
    alone = "ours+tracing          65.7            29.6               -\n"  # --variants ours+tracing
    assert memory_headline(alone).endswith("29.6 KiB traced (target <= 32)")


def test_kv_verdicts() -> None:
    out = ("noise\nverdict 3 nodes (mesh): MISSES the target at 1000 ops/s\n"
           "verdict 1 node (memory): MEETS the target at 1000 ops/s\n")
    assert kv_headline(out).splitlines() == ["KV 3 nodes (mesh): MISSES the target at 1000 ops/s",
                                             "KV 1 node (memory): MEETS the target at 1000 ops/s"]
