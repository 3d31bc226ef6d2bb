"""The node's most recent finished spans, for the built-in trace viewer (`/debug/traces`).

`SpanBuffer` is a SpanProcessor whose `on_end` only appends the finished span
(the `ReadableSpan` itself, a `LeanSpan` for our own spans) to a
`collections.deque(maxlen=max_spans)`: no copy, no conversion, no lock on the
request path. The oldest span falls out when the buffer is full. Everything else
(grouping into traces, conversion to JSON-able dicts) happens only when someone
reads the buffer.

Memory: while it stays in the buffer, an HTTP SERVER span with its 14
attributes weighs about 1.3 KB and a small internal span (kv.put, 6 attributes)
about 0.85 KB (measured with tracemalloc; tests/test_span_buffer.py keeps a
bound on it), so the default 1000 spans cap the buffer at roughly 1.3 MB. Spans
with events weigh more (an exception event carries its stack trace).
The default stays small because kept spans are not free under load: a span
lives ~2.5 s in a 5000-span buffer instead of until its export, and the larger
working set cost ~5% of HTTP throughput on the bench machine (~2% at 1000).

Thread-safety: `on_end` may be called from any thread; `deque.append` is atomic.
Readers take a snapshot (`list(deque)`) first and work on the snapshot only.

Spans are kept as the provider hands them over: with a sampler that records
without sampling (RECORD_ONLY, which none of ours does) such spans are kept too.

Cluster-wide views are assembled by the asking node (server/http/traces_api.py)
from what every node holds: `summaries()` is this node's share of each trace
(unfiltered, so that a filter applies to whole traces), `merge_summaries` joins
the shares into one summary per trace under its real root, `select` filters.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import SpanKind, StatusCode

TRACES_GET = "traces.get"  # cluster message: {"trace_id"} -> {"node", "spans", "truncated"}
# In place of a trace id (in TRACES_GET, or the HTTP lookup a valkey node makes),
# asks for this node's trace summaries instead: {"node", "summaries", "truncated"}.
# Riding on the trace lookup keeps every engine's `peer_spans` as it is; no
# hex trace id can be this word. (Older nodes refuse it: they count as missing.)
RECENT_TRACES = "recent"
# The query parameter (`?poll=1`) the pages add to their own background polling,
# so that the trace list can leave those traces out (`include_polling` brings them back).
POLL_PARAM = "poll"
MAX_NAMES = 64  # distinct span names kept per summary share, for the name filter
TRACE_ID = re.compile(r"[0-9a-f]{32}")
_INVALID_TRACE_ID = "0" * 32


def valid_trace_id(trace_id: object) -> bool:
    """32 lowercase hex digits, not all zero (the W3C invalid id)."""
    return (isinstance(trace_id, str) and TRACE_ID.fullmatch(trace_id) is not None
            and trace_id != _INVALID_TRACE_ID)


class SpanBuffer(SpanProcessor):
    def __init__(self, max_spans: int, node: str = "") -> None:
        if max_spans <= 0:
            raise ValueError("max_spans must be positive (0 means: do not add a buffer)")
        self.max_spans = max_spans
        self.node = node
        self._spans: deque[ReadableSpan] = deque(maxlen=max_spans)

    # -- the hot path (on_start is the base class's no-op) -----------------------
    def on_end(self, span: ReadableSpan) -> None:
        self._spans.append(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- reads -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._spans)

    def snapshot(self) -> list[ReadableSpan]:
        """The buffered spans, oldest first, copied at once."""
        for _ in range(10):
            try:
                return list(self._spans)
            except RuntimeError:  # "deque mutated during iteration" (only without the GIL)
                continue
        return list(self._spans.copy())

    def summaries(self) -> list[dict[str, Any]]:
        """This node's share of every trace it holds spans of, newest first, unfiltered
        (a filter must see the whole trace: `merge_summaries`, then `select`)."""
        by_trace: dict[int, list[ReadableSpan]] = {}
        for span in self.snapshot():
            if span.context is not None:
                by_trace.setdefault(span.context.trace_id, []).append(span)
        out = [_share(f"{trace_id:032x}", spans, self.node) for trace_id, spans in by_trace.items()]
        out.sort(key=lambda t: t["start_unix_nano"], reverse=True)
        return out

    def traces(self, name: str | None = None, min_duration_ms: float | None = None,
               errors_only: bool = False, limit: int = 100,
               include_polling: bool = False) -> list[dict[str, Any]]:
        """Summaries of the traces with spans here (this node's view only), newest first;
        the filters are `select`'s."""
        return select(merge_summaries(self.summaries()), name=name, min_duration_ms=min_duration_ms,
                      errors_only=errors_only, include_polling=include_polling, limit=limit)[0]

    def trace(self, trace_id: str | int) -> list[dict[str, Any]]:
        """The spans of one trace held here, as dicts, by start time."""
        wanted = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
        spans = [s for s in self.snapshot() if s.context is not None and s.context.trace_id == wanted]
        spans.sort(key=_start)
        return [span_to_json(s, self.node) for s in spans]


def peer_reply(buffer: SpanBuffer | None, node: str, body: Mapping[str, Any],
               max_bytes: int) -> dict[str, Any]:
    """The answer to a peer's `traces.get`: this node's spans of the trace, or with
    RECENT_TRACES its trace summaries, at most max_bytes of them as JSON (a cluster
    frame over the limit would close the link); "truncated" says whether some were
    left out (the oldest summaries; the latest spans)."""
    trace_id = body.get("trace_id")
    if trace_id == RECENT_TRACES:
        summaries = buffer.summaries() if buffer is not None else []
        kept = _within(summaries, max_bytes)
        return {"node": node, "summaries": kept, "truncated": len(kept) < len(summaries)}
    if not valid_trace_id(trace_id):
        raise ValueError(f"trace_id must be 32 lowercase hex digits, got {trace_id!r}")
    spans = buffer.trace(str(trace_id)) if buffer is not None else []
    kept = _within(spans, max_bytes)
    return {"node": node, "spans": kept, "truncated": len(kept) < len(spans)}


def _within(items: list[dict[str, Any]], max_bytes: int) -> list[dict[str, Any]]:
    """The leading items whose JSON fits in max_bytes."""
    size = 0
    for i, item in enumerate(items):
        size += len(json.dumps(item, separators=(",", ":")))  # ASCII escapes: >= its UTF-8 size
        if size > max_bytes:
            return items[:i]
    return items


# -- summaries: one node's share of a trace, and shares joined -------------------

def _share(trace_id: str, spans: Sequence[ReadableSpan], node: str) -> dict[str, Any]:
    """What one node knows of a trace: enough to merge with the other nodes' shares."""
    entries = [s for s in spans if _starts_here(s)]
    top = min(entries or spans, key=_start)
    names = sorted({s.name for s in spans})[:MAX_NAMES]
    errors = sum(1 for s in spans if s.status.status_code is StatusCode.ERROR)
    return {"trace_id": trace_id, "node": node,
            "start_unix_nano": min(_start(s) for s in spans), "end_unix_nano": max(_end(s) for s in spans),
            "span_count": len(spans), "errors": errors,
            "names": names, "root_name": top.name, "root": bool(entries),
            "polling": bool(entries) and _is_polling(top)}


def valid_share(share: object) -> bool:
    """A peer's summary share has the fields and types `merge_summaries` relies on."""
    if not isinstance(share, dict):
        return False
    kinds = {"trace_id": str, "start_unix_nano": int, "end_unix_nano": int, "span_count": int,
             "errors": int, "names": list, "root_name": str, "root": bool, "polling": bool}
    return (all(isinstance(share.get(k), t) for k, t in kinds.items()) and valid_trace_id(share["trace_id"])
            and all(isinstance(n, str) for n in share["names"]))


def merge_summaries(shares: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One summary per trace from every node's share, newest first. The root is the
    share holding the trace's entry span (a span without a parent, or an HTTP request
    whose caller may be outside the cluster): a forwarded or replicated part never
    becomes a trace of its own. With no such share (the root's node did not answer,
    or dropped it) `root_node` is None and the root name is the earliest span's."""
    by_trace: dict[str, list[Mapping[str, Any]]] = {}
    for share in shares:
        by_trace.setdefault(share["trace_id"], []).append(share)
    out: list[dict[str, Any]] = []
    for trace_id, parts in by_trace.items():
        rooted = [p for p in parts if p["root"]]
        top = min(rooted or parts, key=lambda p: p["start_unix_nano"])
        start = min(p["start_unix_nano"] for p in parts)
        end = max(p["end_unix_nano"] for p in parts)
        others = sorted({p["node"] for p in parts} - {top["node"]})
        out.append({"trace_id": trace_id, "root_name": top["root_name"],
                    "root_node": top["node"] if rooted else None, "start_unix_nano": start,
                    "duration_ms": round((end - start) / 1e6, 3),
                    "span_count": sum(p["span_count"] for p in parts), "nodes": [top["node"], *others],
                    "errors": sum(p["errors"] for p in parts), "polling": bool(top["polling"]),
                    "names": sorted({n for p in parts for n in p["names"]})})
    out.sort(key=lambda t: t["start_unix_nano"], reverse=True)
    return out


def select(traces: Iterable[dict[str, Any]], *, name: str | None = None,
           min_duration_ms: float | None = None, errors_only: bool = False,
           include_polling: bool = False, limit: int = 100) -> tuple[list[dict[str, Any]], int]:
    """The merged summaries that pass the filters (newest first, at most limit, without
    their `names`), and how many polling traces were left out.

    name: keep traces with a span whose name contains it (case-insensitive);
    min_duration_ms: keep traces at least that long; errors_only: keep traces with
    an ERROR span; include_polling: keep the pages' own polling (`?poll=1`) too."""
    needle = name.lower() if name else None
    out: list[dict[str, Any]] = []
    hidden = 0
    for t in traces:
        if needle is not None and not any(needle in n.lower() for n in t["names"]):
            continue
        if min_duration_ms is not None and t["duration_ms"] < min_duration_ms:
            continue
        if errors_only and not t["errors"]:
            continue
        if t["polling"] and not include_polling:
            hidden += 1
            continue
        out.append({k: v for k, v in t.items() if k != "names"})
    return out[:max(limit, 0)], hidden


def missing_parents(spans: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Spans of one trace that point at a span none of the nodes returned: a parent
    on another node (or a link within the trace). Such a span shows that a node's
    spans are missing even when that node is no longer a member (nobody knows to
    ask it). An absent *local* parent is not one: it may not have ended yet (a
    WebSocket connection's span); nor is an HTTP request's (its caller may be a
    client outside the cluster)."""
    ids = {s.get("span_id") for s in spans}
    out = []
    for s in spans:
        parent = s.get("parent_span_id")
        absent = [parent] if parent and parent not in ids and s.get("parent_remote") else []
        absent += [link["span_id"] for link in s.get("links") or ()
                   if link.get("trace_id") == s.get("trace_id") and link.get("span_id") not in ids]
        if absent and not (s.get("kind") == "SERVER" and "url.path" in (s.get("attributes") or {})):
            attrs = s.get("attributes") or {}
            out.append({"span_id": s.get("span_id"), "name": s.get("name"), "node": s.get("node"),
                        "absent": absent, "from_node": attrs.get("chat.origin_node")})
    return out


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _end(span: ReadableSpan) -> int:
    return span.end_time or span.start_time or 0


def _starts_here(span: ReadableSpan) -> bool:
    """A trace's entry: no parent, or an HTTP request (its parent, if any, is the client's)."""
    return span.parent is None or (span.kind is SpanKind.SERVER and "url.path" in (span.attributes or {}))


def _is_polling(span: ReadableSpan) -> bool:
    query = (span.attributes or {}).get("url.query")
    return isinstance(query, str) and parse_qs(query).get(POLL_PARAM) == ["1"]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): _jsonable(v) for k, v in (attributes or {}).items()}


def span_to_json(span: ReadableSpan, node: str) -> dict[str, Any]:
    """A finished span as a JSON-able dict (ids in lowercase hex, times in ns since the epoch)."""
    ctx = span.context
    start = _start(span)
    end = _end(span)
    status = span.status
    return {
        "trace_id": f"{ctx.trace_id:032x}" if ctx is not None else None,
        "span_id": f"{ctx.span_id:016x}" if ctx is not None else None,
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        # A parent on another node (or a client's): when it is absent, spans are missing.
        "parent_remote": span.parent is not None and span.parent.is_remote,
        "name": span.name,
        "kind": span.kind.name,
        "start_unix_nano": start,
        "end_unix_nano": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": {"code": status.status_code.name, "description": status.description},
        "attributes": _attributes(span.attributes),
        "events": [{"name": e.name, "time_unix_nano": e.timestamp, "attributes": _attributes(e.attributes)}
                   for e in span.events],
        "links": [{"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
                  for link in span.links],
        "node": node,
    }
