"""The OTLP gRPC span exporter with our encoder in place of the SDK's.

Everything else (endpoint and TLS settings, headers, gzip, retries with backoff,
reconnects) is the SDK exporter's own. Two things change, both because the
export thread shares the server's core and the GIL with the event loop:

- spans arrive already encoded (`prepare`, called by CountingBatchSpanProcessor
  when the span ends, on the loop's thread): the export thread then holds the
  GIL only to join bytes, not to encode hundreds of spans at a time, which made
  the loop wait behind it (measured in bench/: ~10% of HTTP throughput);
- the request goes out as those bytes (an identity serializer on our own stub
  callable), not parsed into a message for gRPC to serialize again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import Compression
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan

from tracing.otlp_encoding import EncodedSpan, OtlpTraceEncoder

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


def _identity(request: bytes) -> bytes:
    return request


class FastOTLPSpanExporter(OTLPSpanExporter):
    def __init__(self, **kwargs: Any) -> None:
        self._encoder = OtlpTraceEncoder()  # the export thread's
        self._span_encoder = OtlpTraceEncoder()  # the threads that end spans
        super().__init__(**kwargs)

    def prepare(self, span: ReadableSpan) -> EncodedSpan:
        """Encode one finished span where it ends (see the module docstring)."""
        return self._span_encoder.prepare(span)

    def _initialize_channel_and_stub(self) -> None:
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._client = _RawTraceService(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan | EncodedSpan]) -> bytes:  # type: ignore[override]
        return self._encoder.encode(data)
