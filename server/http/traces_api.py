"""`/debug/traces/api/...`: recent traces and whole traces, assembled from every node.

- `GET /debug/traces/api/traces?name=&min_ms=&errors=1&limit=&include_polling=1&local=1`
  lists recent traces, newest first, cluster-wide: this node asks every other
  member (`trace_peers`) for its trace summaries within `cluster_request_timeout`
  and merges them, so a trace appears once, under its real root, with the span
  count, nodes and errors of all its parts. `nodes` says who answered; members
  that did not are listed in `missing` and make the answer `partial` (as do
  peers that left summaries out: `truncated`). `scope` is "cluster", or "node"
  with `local=1` (this node's buffer only). Filters: `name` (a span name
  contains it, case-insensitive, at most 200 characters), `min_ms` (duration, a
  number >= 0), `errors` (1: only traces with an ERROR span), `limit` (1-1000,
  default 100). The pages' own polling (requests marked `?poll=1`, the chat
  page's `GET /nodes`) is left out unless `include_polling=1`; `hidden_polling`
  counts what was left out.
- `GET /debug/traces/api/traces/<trace_id>` gathers one trace's spans from this
  node and, concurrently, from every other member, with the same deadline.
  `partial` is true when a member did not answer (`missing`), left spans out
  (`truncated`), or when a span points at a parent span on another node that no
  answer held (`orphans`): that catches a node that is gone from the cluster
  (nobody knows to ask it) or whose buffer dropped its spans. `?local=1` asks no one.
- `GET /debug/traces/api/traces/recent` (RECENT_TRACES in place of a trace id):
  this node's unfiltered summaries, what a valkey node asks its peers over HTTP
  (mesh nodes ask over the cluster link, with the same `traces.get` message).

Flags (`errors`, `local`, `include_polling`) take 1/true/yes/on or 0/false/no/off.
A malformed, repeated or unknown parameter is a 400 `{"error": "<parameter>: <what
is wrong>"}`, never silently ignored; so is a trace id that is not 32 lowercase
hex digits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, request

from server.engine.base import PeerError
from server.http.common import json_response, node
from tracing.span_buffer import (
    RECENT_TRACES,
    merge_summaries,
    missing_parents,
    peer_reply,
    select,
    valid_share,
    valid_trace_id,
)

if TYPE_CHECKING:
    from server.node import Node

traces_api = Blueprint("traces_api", __name__)

MAX_LIMIT = 1000
MAX_NAME_CHARS = 200
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_LIST_PARAMS = ("name", "min_ms", "errors", "limit", "include_polling", "local")
_TRACE_PARAMS = ("local",)


class _BadQuery(Exception):
    pass


def _check_params(known: tuple[str, ...]) -> None:
    for key in request.args:
        if key not in known:
            raise _BadQuery(f"{key}: unknown parameter (known: {', '.join(known)})")
        if len(request.args.getlist(key)) > 1:
            raise _BadQuery(f"{key}: given more than once")


def _flag(name: str) -> bool:
    raw = request.args.get(name, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _BadQuery(f"{name}: expected 1 or 0 (true/false, yes/no, on/off), got {raw[:64]!r}")


def _number(name: str, kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise _BadQuery(f"{name}: expected {expected}, got {raw[:64]!r}") from None
    if not math.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _BadQuery(f"{name}: must be a finite number {bounds}, got {raw[:64]!r}")
    return value


def _bad(exc: _BadQuery) -> Response:
    return json_response({"error": str(exc)}, 400)


_Take = Callable[[str, dict[str, Any]], "str | None"]


async def _ask_peers(n: Node, key: str, take: _Take) -> tuple[list[str], list[dict[str, str]]]:
    """Ask every other member for `key` (a trace id or RECENT_TRACES) at once, each
    within cluster_request_timeout; `take` keeps a reply or says what is wrong
    with it. Returns (who answered, who did not and why), sorted by node."""
    answered: list[str] = []
    missing: list[dict[str, str]] = []
    timeout = n.settings.cluster_request_timeout

    async def ask(peer: str) -> None:
        try:
            reply = await n.engine.peer_spans(peer, key, timeout)
        except PeerError as exc:
            missing.append({"node": peer, "reason": str(exc)})
            return
        problem = take(peer, reply) if isinstance(reply, dict) else "malformed reply"
        if problem:
            missing.append({"node": peer, "reason": problem})
        else:
            answered.append(peer)

    async with trio.open_nursery() as nursery:
        for peer in n.engine.trace_peers():
            nursery.start_soon(ask, peer)
    return sorted(answered), sorted(missing, key=lambda m: m["node"])


@traces_api.get("/debug/traces/api/traces")
async def list_traces() -> Response:
    """Recent traces of the whole cluster (or with local=1 this node's), newest first."""
    try:
        _check_params(_LIST_PARAMS)
        name = request.args.get("name", "").strip()
        if len(name) > MAX_NAME_CHARS:
            raise _BadQuery(f"name: at most {MAX_NAME_CHARS} characters, got {len(name)}")
        min_ms = _number("min_ms", float, 0)
        limit = _number("limit", int, 1, MAX_LIMIT)
        errors_only, include_polling, local = _flag("errors"), _flag("include_polling"), _flag("local")
    except _BadQuery as exc:
        return _bad(exc)
    n = node()
    shares = n.span_buffer.summaries() if n.span_buffer is not None else []
    truncated: list[str] = []

    def take(peer: str, reply: dict[str, Any]) -> str | None:
        got = reply.get("summaries")
        if not isinstance(got, list) or not all(valid_share(s) for s in got):
            return "malformed reply (no list of trace summaries)"
        shares.extend({**s, "node": peer} for s in got)
        if reply.get("truncated"):
            truncated.append(peer)
        return None

    answered, missing = ([], []) if local else await _ask_peers(n, RECENT_TRACES, take)
    traces, hidden = select(merge_summaries(shares), name=name or None, min_duration_ms=min_ms,
                            errors_only=errors_only, include_polling=include_polling,
                            limit=100 if limit is None else limit)
    return json_response({
        "node": n.name, "scope": "node" if local else "cluster", "enabled": n.span_buffer is not None,
        "nodes": [n.name, *answered], "partial": bool(missing or truncated), "missing": missing,
        "truncated": sorted(truncated), "hidden_polling": hidden, "traces": traces})


@traces_api.get("/debug/traces/api/traces/<trace_id>")
async def get_trace(trace_id: str) -> Response:
    """One trace's spans from this node and every other member."""
    try:
        _check_params(_TRACE_PARAMS)
        local = _flag("local")
    except _BadQuery as exc:
        return _bad(exc)
    n = node()
    if trace_id == RECENT_TRACES:  # a peer asking for this node's summaries: never fans out
        return json_response(peer_reply(n.span_buffer, n.name, {"trace_id": RECENT_TRACES},
                                        n.settings.cluster_max_message_bytes // 2))
    if not valid_trace_id(trace_id):
        return json_response({"error": f"trace_id must be 32 lowercase hex digits (not all zero), "
                                       f"got {trace_id[:64]!r}"}, 400)
    spans: list[dict[str, Any]] = n.span_buffer.trace(trace_id) if n.span_buffer is not None else []
    truncated: list[str] = []

    def take(peer: str, reply: dict[str, Any]) -> str | None:
        got = reply.get("spans")
        if not isinstance(got, list) or not all(isinstance(s, dict) for s in got):
            return "malformed reply (no list of spans)"
        spans.extend(got)
        if reply.get("truncated"):
            truncated.append(peer)
        return None

    answered, missing = ([], []) if local else await _ask_peers(n, trace_id, take)
    if not spans:
        body: dict[str, Any] = {"error": f"no spans of trace {trace_id} on any node"}
        if missing:
            body["missing"] = missing
        return json_response(body, 404)
    spans.sort(key=lambda s: (s.get("start_unix_nano") or 0))
    orphans = [] if local else missing_parents(spans)
    return json_response({
        "trace_id": trace_id, "spans": spans, "nodes": [n.name, *answered],
        "partial": bool(missing or truncated or orphans), "missing": missing,
        "truncated": sorted(truncated), "orphans": orphans})
