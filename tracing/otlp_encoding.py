"""OTLP trace encoding written straight to protobuf wire bytes.

The SDK's encoder builds a protobuf object for every span, attribute and value:
about 42 µs a span here, on the same core as the server (the export thread
competes with the event loop). Attribute key/value pairs repeat endlessly
(`http.method=GET`, `kv.node=...`), so this encoder caches each pair's encoded
bytes and writes the rest by hand, for the same message the SDK would produce.
tests/test_otlp_encoding.py checks that parsing our bytes gives exactly the
SDK encoder's message.

Wire format reference: opentelemetry-proto trace.proto, common.proto, resource.proto.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

from tracing.sdk_compat import bounded_attributes_dict, span_fields, span_group

_CACHE_LIMIT = 8192
_HAS_IS_REMOTE = 0x100  # SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK
_FLAGS_LOCAL = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)  # Span.flags, field 16 fixed32
_FLAGS_REMOTE = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_EMPTY_STATUS = b"\x7a\x00"  # Span.status present but default
_pack_d = struct.Struct("<d").pack
_pack_q = struct.Struct("<Q").pack
_pack_i = struct.Struct("<I").pack


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:  # a span's length, mostly
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """AnyValue message body."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _pack_d(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"cannot encode attribute value of type {type(value).__name__}")


def _key_value(key: str, value: Any) -> bytes:
    """KeyValue message body."""
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


# Span.kind, field 6: the proto enum counts from UNSPECIFIED.
_KIND = {kind: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}


class OtlpTraceEncoder:
    """Encodes batches of finished spans; keeps caches, so use one per exporter thread."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[bytes, str, type, Any], bytes] = {}
        self._span_pairs: dict[str, dict[Any, bytes]] = {}
        self._span_pair_count = 0
        # Keyed by id(): Resource.__hash__ JSON-encodes its attributes on every
        # call. The object is kept beside its bytes, so its id cannot be reused.
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[InstrumentationScope | None, bytes] = {}

    def _span_attributes(self, attributes: Mapping[str, Any] | None) -> bytes:
        """Span.attributes: `_attributes` with tag 0x4a, and for the common case (a plain
        dict of str and int values, what our spans hold) a cache keyed by key, then value,
        without building a tuple per attribute."""
        if type(attributes) is not dict:
            return self._attributes(b"\x4a", attributes)
        by_key = self._span_pairs
        out = []
        for key, value in attributes.items():
            kind = type(value)
            if kind is str or kind is int:  # bool and float go below: True == 1 == 1.0
                values = by_key.get(key)
                if values is None:
                    values = by_key[key] = {}
                encoded = values.get(value)
                if encoded is None:
                    if self._span_pair_count >= _CACHE_LIMIT:
                        by_key.clear()
                        self._span_pair_count = 0
                        values = by_key[key] = {}
                    encoded = values[value] = _field(b"\x4a", _key_value(key, value))
                    self._span_pair_count += 1
                out.append(encoded)
            else:
                out.append(self._attributes(b"\x4a", {key: value}))
        return b"".join(out)

    def _attributes(self, tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
        """Each attribute as a repeated KeyValue field with the given tag."""
        if not attributes:
            return b""
        pairs = self._pairs
        out = []
        # BoundedAttributes iterates through the Mapping ABC, a call per item;
        # its plain dict is read directly when it is there (the tests cover both).
        items = attributes if type(attributes) is dict else bounded_attributes_dict(attributes)
        for key, value in items.items():
            if isinstance(value, (str, int, float, bool)):
                cache_key = (tag, key, type(value), value)
                encoded = pairs.get(cache_key)
                if encoded is None:
                    if len(pairs) >= _CACHE_LIMIT:
                        pairs.clear()
                    encoded = pairs[cache_key] = _field(tag, _key_value(key, value))
                out.append(encoded)
            else:
                out.append(_field(tag, _key_value(key, value)))
        return b"".join(out)

    def _resource(self, resource: Resource) -> bytes:
        cached = self._resources.get(id(resource))
        if cached is None:
            body = self._attributes(b"\x0a", resource.attributes)
            cached = self._resources[id(resource)] = (resource, _field(b"\x0a", body))
        return cached[1]

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        encoded = self._scopes.get(scope)
        if encoded is None:
            body = b""
            if scope is not None:
                if scope.name:
                    body += _field(b"\x0a", scope.name.encode("utf-8"))
                if scope.version:
                    body += _field(b"\x12", scope.version.encode("utf-8"))
                body += self._attributes(b"\x1a", scope.attributes)
            encoded = self._scopes[scope] = _field(b"\x0a", body)  # ScopeSpans.scope
        return encoded

    def span(self, span: ReadableSpan) -> bytes:
        """Span message body.

        Reads ReadableSpan's fields directly: its properties copy events and
        links into tuples and wrap attributes in a proxy, per span, per export.
        """
        ctx: SpanContext
        (ctx, parent, attributes, name, kind, start_time, end_time, events, links,
         status) = span_fields(span)
        parts = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
        if ctx.trace_state:
            parts.append(_field(b"\x1a", ",".join(f"{k}={v}" for k, v in ctx.trace_state.items()).encode()))
        if parent:
            parts += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
        parts += (_field(b"\x2a", name.encode("utf-8")), _KIND[kind],
                  b"\x39", _pack_q(start_time or 0), b"\x41", _pack_q(end_time or 0),
                  self._span_attributes(attributes))
        # Plain dicts and lists (our lean spans) never drop anything.
        if type(attributes) is not dict and span.dropped_attributes:
            parts += (b"\x50", _varint(span.dropped_attributes))
        for event in events:
            body = b"\x09" + _pack_q(event.timestamp) + _field(b"\x12", event.name.encode("utf-8"))
            body += self._attributes(b"\x1a", event.attributes)
            if event.dropped_attributes:
                body += b"\x20" + _varint(event.dropped_attributes)
            parts.append(_field(b"\x5a", body))
        if type(events) is not list and span.dropped_events:
            parts += (b"\x60", _varint(span.dropped_events))
        for link in links:
            lc = link.context
            body = b"\x0a\x10" + lc.trace_id.to_bytes(16, "big") + b"\x12\x08" + lc.span_id.to_bytes(8, "big")
            body += self._attributes(b"\x22", link.attributes)
            if link.dropped_attributes:
                body += b"\x28" + _varint(link.dropped_attributes)
            body += b"\x35" + _pack_i(_HAS_IS_REMOTE | (_IS_REMOTE if lc.is_remote else 0))
            parts.append(_field(b"\x6a", body))
        if type(links) is not list and span.dropped_links:
            parts += (b"\x70", _varint(span.dropped_links))
        if status.status_code is StatusCode.UNSET and not status.description:
            parts.append(_EMPTY_STATUS)
        else:
            body = _field(b"\x12", status.description.encode("utf-8")) if status.description else b""
            if status.status_code.value:
                body += b"\x18" + _varint(status.status_code.value)
            parts.append(_field(b"\x7a", body))
        parts.append(_FLAGS_REMOTE if _is_remote(parent) else _FLAGS_LOCAL)
        return b"".join(parts)

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """An ExportTraceServiceRequest holding spans, grouped by resource and scope
        (by value, in the order they come, as the SDK's encoder groups them).

        Consecutive spans mostly share their tracer's resource and scope objects:
        the groups are searched only when those change (InstrumentationScope and
        Resource compare in Python)."""
        groups: list[tuple[Resource, InstrumentationScope | None, list[bytes]]] = []
        resource: Resource | None = None
        scope: InstrumentationScope | None = None
        parts: list[bytes] = []
        for span in spans:
            span_resource, span_scope = span_group(span)
            if span_resource is not resource or span_scope is not scope or not groups:
                resource, scope = span_resource, span_scope
                for r, sc, p in groups:
                    if (r is resource or r == resource) and (sc is scope or sc == scope):
                        parts = p
                        break
                else:
                    parts = []
                    groups.append((resource, scope, parts))  # type: ignore[arg-type]
            body = self.span(span)
            parts += (b"\x12", _varint(len(body)), body)  # ScopeSpans.spans
        by_resource: dict[int, tuple[Resource, list[bytes]]] = {}
        for r, sc, p in groups:
            scope_body = self._scope(sc) + b"".join(p)
            if sc is not None and sc.schema_url:
                scope_body += _field(b"\x1a", sc.schema_url.encode("utf-8"))
            first = next((key for key, (other, _) in by_resource.items() if other == r), id(r))
            by_resource.setdefault(first, (r, [self._resource(r)]))[1].append(
                _field(b"\x12", scope_body))  # ResourceSpans.scope_spans
        out = []
        for r, body_parts in by_resource.values():
            if r.schema_url:
                body_parts.append(_field(b"\x1a", r.schema_url.encode("utf-8")))
            out.append(_field(b"\x0a", b"".join(body_parts)))  # request.resource_spans
        return b"".join(out)


def _is_remote(parent: SpanContext | None) -> bool:
    return bool(parent and parent.is_remote)
