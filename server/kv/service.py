"""KV operations as the front ends call them: the store plus the `kv.*` spans.

Each span is a child of whatever span is current (the HTTP request or the
WebSocket message). Values never go into attributes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span

from server.kv.store import Entry, Store
from tracing import spans as S


class KV:
    def __init__(self, store: Store, tracer: trace.Tracer) -> None:
        self.store = store
        self.tracer = tracer

    @property
    def node_name(self) -> str:
        return self.store.node_name

    @contextmanager
    def _span(self, name: str, key: str) -> Iterator[Span]:
        started = time.perf_counter_ns()
        with self.tracer.start_as_current_span(
                name, attributes={S.KV_KEY: S.clip(key), S.KV_NODE: self.node_name}) as span:
            try:
                yield span
            finally:
                span.set_attribute(S.KV_DURATION_US, (time.perf_counter_ns() - started) // 1000)

    def get(self, key: str) -> Entry | None:
        with self._span(S.KV_GET, key) as span:
            entry = self.store.get(key)
            span.set_attribute(S.KV_FOUND, entry is not None)
            return entry

    def put(self, key: str, value: Any) -> Entry:
        with self._span(S.KV_PUT, key):
            return self.store.put(key, value)

    def delete(self, key: str) -> Entry | None:
        with self._span(S.KV_DELETE, key) as span:
            previous = self.store.delete(key)
            span.set_attribute(S.KV_FOUND, previous is not None)
            return previous
