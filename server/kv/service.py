"""KV operations as the front ends call them: the store plus the `kv.*` spans.

Each span is a child of whatever span is current (the HTTP request or the
WebSocket message). A store operation is a dictionary access, so its span is
not made current (nothing nests under it) and costs no context switch.
Values never go into attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from opentelemetry import trace

from server.kv.store import Entry, Store
from tracing import spans as S

T = TypeVar("T")


class KV:
    def __init__(self, store: Store, tracer: trace.Tracer) -> None:
        self.store = store
        self.tracer = tracer

    @property
    def node_name(self) -> str:
        return self.store.node_name

    def _traced(self, name: str, key: str, op: Callable[[], T], found: Callable[[T], bool] | None) -> T:
        span = self.tracer.start_span(name, attributes={S.KV_KEY: S.clip(key), S.KV_NODE: self.node_name})
        started = time.perf_counter_ns()
        try:
            result = op()
        except Exception as exc:
            S.fail(span, exc)
            raise
        else:
            if found is not None:
                span.set_attribute(S.KV_FOUND, found(result))
            return result
        finally:
            span.set_attribute(S.KV_DURATION_US, (time.perf_counter_ns() - started) // 1000)
            span.end()

    def get(self, key: str) -> Entry | None:
        return self._traced(S.KV_GET, key, lambda: self.store.get(key), lambda e: e is not None)

    def put(self, key: str, value: Any) -> Entry:
        return self._traced(S.KV_PUT, key, lambda: self.store.put(key, value), None)

    def delete(self, key: str) -> Entry | None:
        """Returns the entry deleted, None when there was none."""
        return self._traced(S.KV_DELETE, key, lambda: self.store.delete(key), lambda e: e is not None)
