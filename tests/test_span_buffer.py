"""The span buffer behind /debug/traces: bounded, cheap on the hot path, converted when read."""

from __future__ import annotations

import gc
import json
import tracemalloc
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from server.settings import load_settings
from tracing.lean import LeanSpan, tracer_for
from tracing.span_buffer import (
    RECENT_TRACES,
    SpanBuffer,
    merge_summaries,
    missing_parents,
    peer_reply,
    select,
    span_to_json,
    valid_share,
    valid_trace_id,
)

MS = 1_000_000


def buffered(max_spans: int = 100, node: str = "n1") -> tuple[SpanBuffer, trace.Tracer]:
    provider = TracerProvider(shutdown_on_exit=False)
    buffer = SpanBuffer(max_spans, node=node)
    provider.add_span_processor(buffer)
    return buffer, tracer_for(provider, "test")


def make_trace(tracer: trace.Tracer, root: str, start: int, duration_ms: float, *,
               children: int = 1, error: bool = False) -> str:
    """A root span with children; returns the trace id in hex."""
    end = start + int(duration_ms * MS)
    span = tracer.start_span(root, kind=SpanKind.SERVER, start_time=start)
    ctx = trace.set_span_in_context(span)
    for i in range(children):
        child = tracer.start_span(f"child{i}", context=ctx, start_time=start + 1)
        if error:
            child.set_status(Status(StatusCode.ERROR, "boom"))
        child.end(end - 1)
    span.end(end)
    return f"{span.get_span_context().trace_id:032x}"


def test_on_end_stores_the_span_object_itself_no_conversion() -> None:
    buffer, tracer = buffered()
    span = tracer.start_span("x")
    span.end()
    assert isinstance(span, LeanSpan)
    assert buffer.snapshot() == [span]
    assert buffer.snapshot()[0] is span


def test_keeps_only_the_newest_max_spans() -> None:
    buffer, tracer = buffered(max_spans=10)
    for i in range(25):
        tracer.start_span(f"s{i}").end()
    assert len(buffer) == 10
    assert [s.name for s in buffer.snapshot()] == [f"s{i}" for i in range(15, 25)]


def test_zero_is_not_a_buffer() -> None:
    with pytest.raises(ValueError):
        SpanBuffer(0)
    assert load_settings(environ={}, overrides={"trace_buffer_spans": "0"}).trace_buffer_spans == 0
    assert load_settings(environ={}).trace_buffer_spans == 1000


def test_disabled_with_zero_adds_no_processor() -> None:
    from server.node import Node

    provider = TracerProvider(shutdown_on_exit=False)
    settings = load_settings(environ={}, overrides={"trace_buffer_spans": "0"})
    node = Node(settings, name="n1", tracer_provider=provider)
    assert node.span_buffer is None
    assert not any(isinstance(p, SpanBuffer) for p in provider._active_span_processor._span_processors)

    enabled = Node(load_settings(environ={}), name="n2",
                   tracer_provider=TracerProvider(shutdown_on_exit=False))
    assert enabled.span_buffer is not None and enabled.span_buffer.max_spans == 1000
    # Not an SDK provider: nothing to hang a processor on.
    assert Node(load_settings(environ={}), name="n3",
                tracer_provider=trace.NoOpTracerProvider()).span_buffer is None


def test_summaries_newest_first_with_root_duration_counts() -> None:
    buffer, tracer = buffered()
    t0 = 1_700_000_000_000_000_000
    old = make_trace(tracer, "GET /a", t0, 5, children=2)
    new = make_trace(tracer, "GET /b", t0 + 1000 * MS, 50, error=True)
    summaries = buffer.traces()
    assert [s["trace_id"] for s in summaries] == [new, old]
    assert summaries[1] == {"trace_id": old, "root_name": "GET /a", "root_node": "n1", "start_unix_nano": t0,
                            "duration_ms": 5.0, "span_count": 3, "nodes": ["n1"], "errors": 0,
                            "polling": False}
    assert summaries[0]["errors"] == 1 and summaries[0]["span_count"] == 2
    assert buffer.traces(limit=1)[0]["trace_id"] == new


def test_filters_by_name_min_duration_and_errors() -> None:
    buffer, tracer = buffered()
    t0 = 1_700_000_000_000_000_000
    fast = make_trace(tracer, "GET /kv/{key}", t0, 2)
    slow = make_trace(tracer, "PUT /kv/{key}", t0 + MS, 300)
    failed = make_trace(tracer, "GET /rooms", t0 + 2 * MS, 1, error=True)

    def ids(**kw: Any) -> set[str]:
        return {s["trace_id"] for s in buffer.traces(**kw)}

    assert ids(name="kv") == {fast, slow}
    assert ids(name="put /KV") == {slow}
    assert ids(name="child0") == {fast, slow, failed}  # any span's name counts
    assert ids(name="nothing") == set()
    assert ids(min_duration_ms=100) == {slow}
    assert ids(min_duration_ms=2) == {fast, slow}
    assert ids(errors_only=True) == {failed}
    assert ids(name="kv", errors_only=True) == set()


def remote_parent(trace_id: int = 0xABC, span_id: int = 0xDEF) -> Any:
    """A context whose current span is another node's."""
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def test_root_elsewhere_is_the_earliest_span_here_with_no_root_node() -> None:
    buffer, tracer = buffered()
    ctx = remote_parent()
    tracer.start_span("late", context=ctx, start_time=2000).end(3000)
    tracer.start_span("early", context=ctx, start_time=1000).end(1500)
    (summary,) = buffer.traces()
    assert summary["root_name"] == "early" and summary["root_node"] is None
    assert summary["trace_id"] == f"{0xABC:032x}"
    assert summary["duration_ms"] == 0.002
    # An HTTP request with a client's traceparent is the trace's entry all the same.
    tracer.start_span("GET /kv/{key}", context=remote_parent(0x123), kind=SpanKind.SERVER, start_time=1000,
                      attributes={"url.path": "/kv/a"}).end(2000)
    http = next(s for s in buffer.traces() if s["trace_id"] == f"{0x123:032x}")
    assert http["root_node"] == "n1" and http["root_name"] == "GET /kv/{key}"


def test_shares_of_several_nodes_merge_into_one_trace_under_its_real_root() -> None:
    """A forwarded or replicated part (its parent on another node) is no trace of its own."""
    n1, t1 = buffered(node="n1")
    n2, t2 = buffered(node="n2")
    n3, t3 = buffered(node="n3")
    root = t1.start_span("PUT /kv/{key}", kind=SpanKind.SERVER, start_time=1000 * MS,
                         attributes={"url.path": "/kv/a"})
    ctx = root.get_span_context()
    t2.start_span("kv.put", context=remote_parent(ctx.trace_id, ctx.span_id), kind=SpanKind.SERVER,
                  start_time=1001 * MS).end(1002 * MS)
    failed = t3.start_span("kv.put", context=remote_parent(ctx.trace_id, ctx.span_id), kind=SpanKind.SERVER,
                           start_time=1001 * MS)
    failed.set_status(Status(StatusCode.ERROR, "disk"))
    failed.end(1006 * MS)
    root.end(1004 * MS)
    make_trace(t2, "GET /other", 900 * MS, 1)  # an older trace of n2's own

    shares = n2.summaries() + n3.summaries() + n1.summaries()  # in any order
    assert all(valid_share(s) for s in shares)
    merged = merge_summaries(shares)
    assert [t["root_name"] for t in merged] == ["PUT /kv/{key}", "GET /other"]
    put = merged[0]
    assert put["trace_id"] == f"{ctx.trace_id:032x}" and put["root_node"] == "n1"
    assert put["nodes"] == ["n1", "n2", "n3"]  # the root's node first
    assert (put["span_count"], put["errors"], put["duration_ms"]) == (3, 1, 6.0)
    # Filters apply to the whole trace: n3's failed replica makes the PUT an error trace,
    # and a span name held only by a replica finds it.
    (errors,), _ = select(merged, errors_only=True)
    assert errors["trace_id"] == put["trace_id"] and "names" not in errors
    assert [t["root_name"] for t in select(merged, name="KV.PUT")[0]] == ["PUT /kv/{key}"]
    assert [t["root_name"] for t in select(merged, min_duration_ms=5)[0]] == ["PUT /kv/{key}"]
    # Seen from n2 alone, the replica is a trace without its root.
    alone = [t for t in n2.traces() if t["trace_id"] == put["trace_id"]]
    assert alone[0]["root_node"] is None and alone[0]["root_name"] == "kv.put"


def test_polling_traces_are_left_out_unless_included() -> None:
    buffer, tracer = buffered()
    for query in ("detail=1&poll=1", "detail=1", "poll=0"):
        tracer.start_span("GET /nodes", kind=SpanKind.SERVER, start_time=1000,
                          attributes={"url.path": "/nodes", "url.query": query}).end(2000)
    traces, hidden = select(merge_summaries(buffer.summaries()))
    assert hidden == 1 and len(traces) == 2 and not any(t["polling"] for t in traces)
    everything, hidden = select(merge_summaries(buffer.summaries()), include_polling=True)
    assert hidden == 0 and sorted(t["polling"] for t in everything) == [False, False, True]


def test_missing_parents_are_remote_parents_no_node_returned() -> None:
    buffer, tracer = buffered(node="n2")
    with tracer.start_as_current_span("local-root"):
        tracer.start_span("local-child").end()
    tracer.start_span("chat.broadcast", context=remote_parent(0xABC, 0xDEF), kind=SpanKind.CONSUMER,
                      attributes={"chat.origin_node": "n3"}).end()
    tracer.start_span("GET /kv/{key}", context=remote_parent(0xABC, 0xD00), kind=SpanKind.SERVER,
                      attributes={"url.path": "/kv/a"}).end()
    spans = [span_to_json(s, "n2") for s in buffer.snapshot()]
    (orphan,) = missing_parents(spans)
    assert orphan["name"] == "chat.broadcast" and orphan["node"] == "n2"
    assert orphan["absent"] == [f"{0xDEF:016x}"] and orphan["from_node"] == "n3"
    # A local parent that is not there yet (still running) is not a missing node.
    assert missing_parents([s for s in spans if s["name"] == "local-child"]) == []


def test_span_to_json_of_a_real_span() -> None:
    buffer, tracer = buffered(node="n7")
    linked = SpanContext(0x1234, 0x5678, is_remote=True)
    with tracer.start_as_current_span("parent") as parent:
        span = tracer.start_span("GET /kv/{key}", kind=SpanKind.CLIENT, start_time=1_000_000,
                                 attributes={"http.status_code": 500, "tags": ("a", "b"), "ok": False},
                                 links=[Link(linked)])
        span.add_event("retry", {"attempt": 2}, timestamp=1_500_000)
        span.record_exception(RuntimeError("bad"))
        span.set_status(Status(StatusCode.ERROR, "it broke"))
        span.end(3_500_000)
    out = span_to_json(buffer.snapshot()[0], "n7")
    json.dumps(out)  # JSON-able as is
    ctx, pctx = span.get_span_context(), parent.get_span_context()
    assert out["trace_id"] == f"{ctx.trace_id:032x}" and len(out["trace_id"]) == 32
    assert out["span_id"] == f"{ctx.span_id:016x}"
    assert out["parent_span_id"] == f"{pctx.span_id:016x}"
    assert out["name"] == "GET /kv/{key}" and out["kind"] == "CLIENT"
    assert (out["start_unix_nano"], out["end_unix_nano"], out["duration_ms"]) == (1_000_000, 3_500_000, 2.5)
    assert out["status"] == {"code": "ERROR", "description": "it broke"}
    assert out["attributes"] == {"http.status_code": 500, "tags": ["a", "b"], "ok": False}
    assert out["events"][0] == {"name": "retry", "time_unix_nano": 1_500_000, "attributes": {"attempt": 2}}
    assert out["events"][1]["name"] == "exception"
    assert out["events"][1]["attributes"]["exception.message"] == "bad"
    assert out["links"] == [{"trace_id": f"{0x1234:032x}", "span_id": f"{0x5678:016x}"}]
    assert out["node"] == "n7" and out["parent_remote"] is False
    root = span_to_json(buffer.snapshot()[1], "n7")
    assert root["parent_span_id"] is None and root["kind"] == "INTERNAL" and root["parent_remote"] is False
    assert root["status"] == {"code": "UNSET", "description": None}


def test_trace_returns_one_traces_spans_by_start() -> None:
    buffer, tracer = buffered()
    wanted = make_trace(tracer, "root", 10_000, 1, children=3)
    make_trace(tracer, "other", 20_000, 1)
    spans = buffer.trace(wanted)
    assert [s["name"] for s in spans] == ["root", "child0", "child1", "child2"]
    assert {s["trace_id"] for s in spans} == {wanted}
    assert buffer.trace("f" * 32) == []


def test_sdk_spans_are_kept_too() -> None:
    provider = TracerProvider(shutdown_on_exit=False)
    buffer = SpanBuffer(10, node="n1")
    provider.add_span_processor(buffer)
    with provider.get_tracer("sdk").start_as_current_span("sdk-span"):
        pass
    (span,) = buffer.snapshot()
    assert isinstance(span, ReadableSpan)
    assert span_to_json(span, "n1")["name"] == "sdk-span"


def test_peer_reply_validates_and_truncates_to_the_byte_budget() -> None:
    buffer, tracer = buffered()
    trace_id = make_trace(tracer, "root", 10_000, 1, children=20)
    full = peer_reply(buffer, "n2", {"trace_id": trace_id}, 1_000_000)
    assert full["node"] == "n2" and len(full["spans"]) == 21 and full["truncated"] is False
    small = peer_reply(buffer, "n2", {"trace_id": trace_id}, 2000)
    assert 0 < len(small["spans"]) < 21 and small["truncated"] is True
    # the budget, plus the list's brackets and commas
    assert len(json.dumps(small["spans"], separators=(",", ":"))) <= 2000 + len(small["spans"]) + 1
    assert peer_reply(None, "n2", {"trace_id": trace_id}, 1000) == {"node": "n2", "spans": [],
                                                                     "truncated": False}
    with pytest.raises(ValueError):
        peer_reply(buffer, "n2", {"trace_id": "xyz"}, 1000)


def test_peer_reply_recent_gives_summary_shares_within_the_byte_budget() -> None:
    buffer, tracer = buffered(node="n2")
    for i in range(30):
        make_trace(tracer, f"GET /{i}", 10_000 + i * MS, 1)
    full = peer_reply(buffer, "n2", {"trace_id": RECENT_TRACES}, 1_000_000)
    assert full["node"] == "n2" and full["truncated"] is False and len(full["summaries"]) == 30
    assert all(valid_share(s) for s in full["summaries"])
    assert full["summaries"][0]["root_name"] == "GET /29"  # newest first: the oldest are left out
    small = peer_reply(buffer, "n2", {"trace_id": RECENT_TRACES}, 2000)
    assert 0 < len(small["summaries"]) < 30 and small["truncated"] is True
    assert small["summaries"] == full["summaries"][:len(small["summaries"])]
    assert peer_reply(None, "n2", {"trace_id": RECENT_TRACES}, 1000) == {
        "node": "n2", "summaries": [], "truncated": False}
    assert not valid_share({**full["summaries"][0], "span_count": "3"})
    assert not valid_share({**full["summaries"][0], "trace_id": "zz"})


def test_valid_trace_id() -> None:
    assert valid_trace_id("0af7651916cd43dd8448eb211c80319c")
    assert not valid_trace_id("0AF7651916CD43DD8448EB211C80319C")
    assert not valid_trace_id("0" * 32)
    assert not valid_trace_id("abc")
    assert not valid_trace_id(None)


def test_memory_per_span_stays_small() -> None:
    """The figure documented in tracing/span_buffer.py (~1.3 KB an HTTP span)."""
    buffer, tracer = buffered(max_spans=2000)

    def one(i: int) -> None:
        span = tracer.start_span("GET", kind=SpanKind.SERVER, attributes={
            "http.method": "GET", "http.request.method": "GET", "http.target": f"/kv/k{i}",
            "url.path": f"/kv/k{i}", "url.scheme": "http", "http.user_agent": "".join(["httpx/", str(i)]),
            "user_agent.original": "".join(["httpx/", str(i)]), "client.address": f"127.0.0.{i % 250}",
            "server.address": "127.0.0.1", "server.port": 4000, "network.protocol.version": "1.1"})
        span.set_attributes({"http.route": "/kv/{key}", "http.status_code": 200,
                             "http.response.status_code": 200})
        span.update_name("GET /kv/{key}")
        span.end()

    for i in range(2000):
        one(i)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2000, 6000):  # replaces every buffered span (twice)
            one(i)
        gc.collect()
        per_span = (tracemalloc.get_traced_memory()[0] - before) / 2000
    finally:
        tracemalloc.stop()
    assert len(buffer) == 2000
    assert 300 < per_span < 2500, per_span
