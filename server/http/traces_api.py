"""`/debug/traces/api/...`: the node's recent spans, and whole traces assembled from peers.

- `GET /debug/traces/api/traces?name=&min_ms=&errors=1&limit=` lists the traces
  with spans in this node's buffer (tracing/span_buffer.py), newest first.
- `GET /debug/traces/api/traces/<trace_id>` gathers one trace's spans from this
  node and, concurrently, from every other member (cluster message
  `traces.get`) within `cluster_request_timeout`; members that could not answer
  are listed in `missing` and make the answer `partial`. `?local=1` asks no one.
"""

from __future__ import annotations

from typing import Any

import trio
from quart import Blueprint, Response, request

from server.engine.base import PeerError
from server.http.routes import json_response, node
from tracing.span_buffer import valid_trace_id

traces_api = Blueprint("traces_api", __name__)

MAX_LIMIT = 1000
_TRUE = ("1", "true", "yes", "on")


class _BadQuery(Exception):
    pass


def _number(name: str, kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise _BadQuery(f"{name}: expected {expected}, got {raw!r}") from None
    if value < low or (high is not None and value > high) or value != value:
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _BadQuery(f"{name}: must be {bounds}, got {raw!r}")
    return value


@traces_api.get("/debug/traces/api/traces")
async def list_traces() -> Response:
    """Summaries of the traces in this node's buffer, newest first."""
    n = node()
    try:
        min_ms = _number("min_ms", float, 0)
        limit = _number("limit", int, 1, MAX_LIMIT)
    except _BadQuery as exc:
        return json_response({"error": str(exc)}, 400)
    buffer = n.span_buffer
    traces = [] if buffer is None else buffer.traces(
        name=request.args.get("name") or None, min_duration_ms=min_ms,
        errors_only=request.args.get("errors", "").lower() in _TRUE,
        limit=100 if limit is None else limit)
    return json_response({"node": n.name, "enabled": buffer is not None, "traces": traces})


@traces_api.get("/debug/traces/api/traces/<trace_id>")
async def get_trace(trace_id: str) -> Response:
    """One trace's spans from this node and every other member."""
    if not valid_trace_id(trace_id):
        return json_response({"error": f"trace_id must be 32 lowercase hex digits (not all zero), "
                                       f"got {trace_id[:64]!r}"}, 400)
    n = node()
    spans: list[dict[str, Any]] = n.span_buffer.trace(trace_id) if n.span_buffer is not None else []
    answered = [n.name]
    missing: list[dict[str, str]] = []
    truncated: list[str] = []
    peers = n.engine.trace_peers()
    if peers and request.args.get("local", "").lower() not in _TRUE:
        timeout = n.settings.cluster_request_timeout

        async def ask(peer: str) -> None:
            try:
                reply = await n.engine.peer_spans(peer, trace_id, timeout)
            except PeerError as exc:
                missing.append({"node": peer, "reason": str(exc)})
                return
            got = reply.get("spans")
            if not isinstance(got, list) or not all(isinstance(s, dict) for s in got):
                missing.append({"node": peer, "reason": "malformed reply (no list of spans)"})
                return
            answered.append(peer)
            spans.extend(got)
            if reply.get("truncated"):
                truncated.append(peer)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
    if not spans:
        body: dict[str, Any] = {"error": f"no spans of trace {trace_id} on any node"}
        if missing:
            body["missing"] = sorted(missing, key=lambda m: m["node"])
        return json_response(body, 404)
    spans.sort(key=lambda s: (s.get("start_unix_nano") or 0))
    return json_response({
        "trace_id": trace_id, "spans": spans, "nodes": [answered[0], *sorted(answered[1:])],
        "partial": bool(missing or truncated), "missing": sorted(missing, key=lambda m: m["node"]),
        "truncated": sorted(truncated)})
