"""The OTLP gRPC span exporter with our encoder in place of the SDK's.

Everything else (endpoint and TLS settings, headers, gzip, retries with backoff,
reconnects) is the SDK exporter's own. Two things change, both because the
export thread shares the server's core (and the GIL) with the event loop:

- tracing/otlp_encoding.py writes the batch straight to protobuf bytes, about a
  sixth of the SDK encoder's CPU per span;
- the request goes out as those bytes (an identity serializer on our own stub
  callable), not parsed into a message for gRPC to serialize again.

Spans are encoded here, a batch at a time, not as each one ends on the loop's
thread: both run on the same core, and in a tight loop over a batch the encoder
costs less than half of what it costs interleaved with request handling (its
code and caches stay warm; measured in bench/, see RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan

from tracing.otlp_encoding import OtlpTraceEncoder
from tracing.sdk_compat import exporter_channel, set_exporter_client

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _RawTraceService:
    """What the SDK calls `self._client`: Export(request=bytes, metadata=..., timeout=...)."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(EXPORT_METHOD, request_serializer=_identity,
                                          response_deserializer=ExportTraceServiceResponse.FromString)


def grpc_compression(name: str) -> Compression:
    """gRPC's compression for a `traces.compression` value (gzip, deflate, none): one
    setting for every signal the node exports (spans, metrics, logs)."""
    return {"gzip": Compression.Gzip, "deflate": Compression.Deflate,
            "none": Compression.NoCompression}[name]


def http_compression(name: str) -> Any:
    """The SDK OTLP/HTTP exporters' Compression for the same value (imported here, on first use,
    so a node exporting over gRPC never loads the HTTP exporter and `requests`)."""
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

    return {"gzip": HttpCompression.Gzip, "deflate": HttpCompression.Deflate,
            "none": HttpCompression.NoCompression}[name]


def _identity(request: bytes) -> bytes:
    return request


class FastOTLPSpanExporter(OTLPSpanExporter):
    def __init__(self, **kwargs: Any) -> None:
        self._encoder = OtlpTraceEncoder()  # used by the export thread only
        super().__init__(**kwargs)

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        set_exporter_client(self, _RawTraceService(exporter_channel(self)))

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
        return self._encoder.encode(data)
