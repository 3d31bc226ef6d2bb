"""KV on Valkey: one Valkey key per KV key (`<prefix>:kv:<key>`), its value the JSON
`{"value": ..., "version": {...}}`.

Valkey orders the writes to a key (one primary owns it), so the last write to
arrive wins; the version is the writing node's hybrid-clock stamp, kept for the
API's `version` field. `from_node` is the node that served the request. A key
limit is the server's `maxmemory` (its OOM error is a 507), not `max_keys`.
"""

from __future__ import annotations

import json
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from server.engine.base import Read
from server.engine.valkey.client import ValkeyClient
from server.engine.valkey.keys import Keys
from server.kv.clock import HybridClock, Timestamp
from server.kv.store import Entry, Version, version_from_json
from tracing import spans as S
from tracing.kv_span import KVSpan
from tracing.metrics import Metrics

# A value some other program wrote under our prefix: shown as it is, with this version.
_FOREIGN = Version(Timestamp(0, 0), "unknown")


class ValkeyKV:
    def __init__(self, client: ValkeyClient, keys: Keys, tracer: trace.Tracer, *, node_name: str,
                 metrics: Metrics | None = None, clock: HybridClock | None = None) -> None:
        self.client = client
        self.keys = keys
        self.tracer = tracer
        self._node_name = node_name
        self.metrics = metrics
        self.clock = clock or HybridClock()

    @property
    def node_name(self) -> str:
        return self._node_name

    async def get(self, key: str) -> Read:
        with self._span(S.KV_GET, key) as span:
            raw = await self.client.call("GET", lambda c: c.get(self.keys.kv(key)))
            entry = None if raw is None else decode_entry(key, raw)
            span.found(entry is not None)
            return Read(entry, self._node_name)

    async def put(self, key: str, value: Any) -> Entry:
        entry = Entry(key, value, Version(self.clock.now(), self._node_name))
        encoded = encode_entry(entry)
        with self._span(S.KV_PUT, key):
            await self.client.call("SET", lambda c: c.set(self.keys.kv(key), encoded))
        return entry

    async def delete(self, key: str) -> bool:
        with self._span(S.KV_DELETE, key) as span:
            removed = await self.client.call("DEL", lambda c: c.delete([self.keys.kv(key)]))
            span.found(removed > 0)
            return removed > 0

    def _span(self, name: str, key: str) -> KVSpan:
        attributes = {S.KV_KEY: S.clip(key), S.KV_NODE: self._node_name}
        return KVSpan(self.tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes),
                      True, name.removeprefix("kv."), self.metrics)


def encode_entry(entry: Entry) -> str:
    return json.dumps({"value": entry.value, "version": entry.version.to_json()},
                      ensure_ascii=False, separators=(",", ":"))


def decode_entry(key: str, raw: str) -> Entry:
    try:
        stored = json.loads(raw)
        return Entry(key, stored["value"], version_from_json(stored["version"]))
    except (ValueError, TypeError, KeyError):
        return Entry(key, raw, _FOREIGN)
