"""bench.kv_cluster's open-loop bookkeeping, without a clock or a server: the schedule,
latency from the due time, error counting, percentiles, HTTP answer parsing."""

from __future__ import annotations

import math
import random

import pytest

from bench.kv_cluster import Op, Schedule, Tally, parse_response


def schedule(rate: float = 1000.0, seconds: float = 1.0, nodes: int = 3) -> Schedule:
    return Schedule(rate, seconds, nodes, [f"k{i}" for i in range(10)], random.Random(1))


def test_operations_are_due_at_fixed_intervals_whatever_the_caller_did() -> None:
    s = schedule(rate=1000.0, seconds=0.01)
    assert s.count == 10 and s.interval_ns == 1_000_000 and s.span_ns == 10_000_000
    assert [op.seq for op in s.take_due(0)] == [0]
    assert s.take_due(999_999) == []
    # A caller that comes back late gets everything due meanwhile, with the original due times.
    late = s.take_due(4_500_000)
    assert [(op.seq, op.due_ns) for op in late] == [(i, i * 1_000_000) for i in range(1, 5)]
    assert s.next_due_ns() == 5_000_000
    rest = s.take_due(10**12)
    assert [op.seq for op in rest] == list(range(5, 10))
    assert s.done and s.next_due_ns() is None and s.take_due(10**12) == []


def test_puts_and_gets_alternate_round_robin_over_the_nodes() -> None:
    ops = schedule(nodes=3).take_due(10**12)
    assert [op.kind for op in ops[:4]] == ["put", "get", "put", "get"]
    assert [op.node for op in ops[:6]] == [0, 1, 2, 0, 1, 2]
    # Each node gets puts and gets alike (3 nodes, 2 kinds: the pair shifts every round).
    for node in range(3):
        kinds = [op.kind for op in ops if op.node == node]
        assert abs(kinds.count("put") - kinds.count("get")) <= 1
    assert {op.key for op in ops} <= {f"k{i}" for i in range(10)}
    assert [op.node for op in schedule(nodes=1).take_due(10**12)] == [0] * 1000


def test_a_bad_plan_is_refused() -> None:
    with pytest.raises(ValueError):
        Schedule(0, 1.0, 3, ["k"], random.Random(1))
    with pytest.raises(ValueError):
        Schedule(10, 1.0, 3, [], random.Random(1))


def test_latency_runs_from_the_due_time_not_from_the_send() -> None:
    tally = Tally()
    put = Op(0, 1_000_000, 0, "put", "k")
    get = Op(1, 2_000_000, 1, "get", "k")
    tally.dispatched(put, 1_500_000)  # sent half a millisecond late
    tally.answered(put, 4_000_000, 200)
    tally.dispatched(get, 2_000_000)
    tally.answered(get, 2_250_000, 200)
    assert tally.latencies_ns == {"put": [3_000_000], "get": [250_000]}
    assert tally.max_send_lag_ns == 500_000
    assert tally.ok == 2 and tally.failed == 0


def test_errors_are_counted_by_kind_and_keep_out_of_the_latencies() -> None:
    tally = Tally()
    op = Op(0, 0, 0, "get", "k")
    tally.answered(op, 1_000, 503)
    tally.answered(op, 1_000, 404)
    tally.error("timeout")
    tally.error("timeout")
    assert tally.ok == 0 and tally.failed == 4
    assert tally.errors == {"503": 1, "404": 1, "timeout": 2}
    assert all(math.isnan(q) for q in tally.quantiles_ms())


def test_quantiles_per_kind_and_over_both_and_merging() -> None:
    a, b = Tally(), Tally()
    for i in range(1, 101):  # 1..100 ms puts in a, 101..200 ms gets in b
        a.answered(Op(i, 0, 0, "put", "k"), i * 1_000_000, 200)
        b.answered(Op(i, 0, 0, "get", "k"), (100 + i) * 1_000_000, 200)
    b.error("timeout")
    b.sent, b.late, b.max_send_lag_ns = 101, 1, 7
    assert a.quantiles_ms("put") == [50.0, 90.0, 99.0, 100.0, 100.0]
    a.merge(b)
    assert a.ok == 200 and a.failed == 1 and a.errors == {"timeout": 1}
    assert (a.sent, a.late, a.max_send_lag_ns) == (101, 1, 7)
    assert a.quantiles_ms("get")[0] == 150.0
    p50, p90, p99, p999, top = a.quantiles_ms()
    assert (p50, p90, p99, p999, top) == (100.0, 180.0, 198.0, 200.0, 200.0)


def test_parse_response_waits_for_the_whole_answer() -> None:
    head = b"HTTP/1.1 200 \r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"
    assert parse_response(bytearray(head[:20])) is None
    assert parse_response(bytearray(head + b'{"value":')) is None
    answer = parse_response(bytearray(head + b'{"value":1}'))
    assert answer is not None
    assert (answer.status, answer.length, answer.close) == (200, len(head) + 11, False)


def test_parse_response_sees_the_servers_last_answer_on_a_connection() -> None:
    raw = bytearray(b"HTTP/1.1 503 \r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    answer = parse_response(raw)
    assert answer is not None and answer.status == 503 and answer.close
    empty = parse_response(bytearray(b"HTTP/1.1 204 \r\nserver: x\r\n\r\n"))
    assert empty is not None and empty.length == len(b"HTTP/1.1 204 \r\nserver: x\r\n\r\n")


def test_nearest_rank_percentile() -> None:
    from bench.report import percentile

    values = list(range(1, 101))
    assert [percentile(values, q) for q in (0, 1, 50, 90, 99, 99.9, 100)] == [1, 1, 50, 90, 99, 100, 100]
    thousand = list(range(1, 1001))
    assert [percentile(thousand, q) for q in (50, 90, 99, 99.9)] == [500, 900, 990, 999]
    assert percentile([7], 99) == 7 and math.isnan(percentile([], 50))
