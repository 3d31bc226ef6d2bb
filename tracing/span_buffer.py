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
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.trace import StatusCode

TRACES_GET = "traces.get"  # cluster message: {"trace_id"} -> {"node", "spans", "truncated"}
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

    def traces(self, name: str | None = None, min_duration_ms: float | None = None,
               errors_only: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Summaries of the traces with spans here, newest first.

        name: keep traces with a span whose name contains it (case-insensitive);
        min_duration_ms: keep traces whose duration here is at least that;
        errors_only: keep traces with at least one ERROR span here.
        """
        by_trace: dict[int, list[ReadableSpan]] = {}
        for span in self.snapshot():
            if span.context is not None:
                by_trace.setdefault(span.context.trace_id, []).append(span)
        needle = name.lower() if name else None
        out: list[dict[str, Any]] = []
        for trace_id, spans in by_trace.items():
            if needle is not None and not any(needle in s.name.lower() for s in spans):
                continue
            start = min(_start(s) for s in spans)
            duration_ms = round((max(_end(s) for s in spans) - start) / 1e6, 3)
            if min_duration_ms is not None and duration_ms < min_duration_ms:
                continue
            errors = sum(1 for s in spans if s.status.status_code is StatusCode.ERROR)
            if errors_only and not errors:
                continue
            out.append({"trace_id": f"{trace_id:032x}", "root_name": _root(spans).name,
                        "start_unix_nano": start, "duration_ms": duration_ms,
                        "span_count": len(spans), "nodes": [self.node], "errors": errors})
        out.sort(key=lambda t: t["start_unix_nano"], reverse=True)
        return out[:max(limit, 0)]

    def trace(self, trace_id: str | int) -> list[dict[str, Any]]:
        """The spans of one trace held here, as dicts, by start time."""
        wanted = int(trace_id, 16) if isinstance(trace_id, str) else trace_id
        spans = [s for s in self.snapshot() if s.context is not None and s.context.trace_id == wanted]
        spans.sort(key=_start)
        return [span_to_json(s, self.node) for s in spans]


def peer_reply(buffer: SpanBuffer | None, node: str, body: Mapping[str, Any],
               max_bytes: int) -> dict[str, Any]:
    """The answer to a peer's `traces.get`: this node's spans of the trace, at most
    max_bytes of them as JSON (a cluster frame over the limit would close the link);
    "truncated" says whether some were left out."""
    trace_id = body.get("trace_id")
    if not valid_trace_id(trace_id):
        raise ValueError(f"trace_id must be 32 lowercase hex digits, got {trace_id!r}")
    spans = buffer.trace(str(trace_id)) if buffer is not None else []
    kept: list[dict[str, Any]] = []
    size = 0
    for span in spans:
        size += len(json.dumps(span, separators=(",", ":")))  # ASCII escapes: >= its UTF-8 size
        if size > max_bytes:
            break
        kept.append(span)
    return {"node": node, "spans": kept, "truncated": len(kept) < len(spans)}


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


def _end(span: ReadableSpan) -> int:
    return span.end_time or span.start_time or 0


def _root(spans: Sequence[ReadableSpan]) -> ReadableSpan:
    """The span without a parent; else (the root is on another node, or already
    dropped) the earliest span here."""
    roots = [s for s in spans if s.parent is None]
    return min(roots or spans, key=_start)


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
