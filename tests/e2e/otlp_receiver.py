"""A real OTLP/gRPC trace receiver for end-to-end tests.

It listens on 127.0.0.1 (port 0 the first time, the same port after a restart),
answers every `TraceService/Export`, and records each request together with the
compression it arrived in.

Compression is read off the wire, not from metadata: gRPC core consumes the
`grpc-encoding` header, so `context.invocation_metadata()` never shows it.
The server is built with `grpc.per_message_decompression` off, so the handler
gets the message bytes exactly as sent and tells gzip (magic 1f 8b) and deflate
(zlib header) from plain protobuf itself. That is also why the servicer is
registered with its own method handler rather than
`add_TraceServiceServicer_to_server`, whose deserializer would parse the
protobuf before we could look at it.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import trio
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
_METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"


@dataclass(frozen=True)
class ReceivedRequest:
    request: pb.ExportTraceServiceRequest
    encoding: str  # "gzip", "deflate" or "identity", as it came over the wire
    wire_bytes: int


@dataclass(frozen=True)
class ReceivedSpan:
    resource: dict[str, Any]
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: str  # "SERVER", "INTERNAL", ...
    attributes: dict[str, Any]

    @property
    def service_name(self) -> Any:
        return self.resource.get("service.name")

    @property
    def instance_id(self) -> Any:
        return self.resource.get("service.instance.id")


def decode_value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [decode_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return decode_attributes(value.kvlist_value.values)
    return getattr(value, which)


def decode_attributes(attributes: Sequence[KeyValue]) -> dict[str, Any]:
    return {kv.key: decode_value(kv.value) for kv in attributes}


def _encoding(data: bytes) -> str:
    if data[:2] == b"\x1f\x8b":
        return "gzip"
    if data[:1] == b"\x78":  # zlib header; a valid request starts with field 1 (0x0a)
        return "deflate"
    return "identity"


def _decompress(data: bytes) -> bytes:
    encoding = _encoding(data)
    return gzip.decompress(data) if encoding == "gzip" else zlib.decompress(data) if encoding == "deflate" \
        else data


def _decode_wire(data: bytes) -> tuple[pb.ExportTraceServiceRequest, str]:
    return pb.ExportTraceServiceRequest.FromString(_decompress(data)), _encoding(data)


class _Servicer(pb_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, record: Callable[[ReceivedRequest], None]) -> None:
        self._record = record

    def Export(self, request: ReceivedRequest, context: grpc.ServicerContext
               ) -> pb.ExportTraceServiceResponse:
        self._record(request)
        return pb.ExportTraceServiceResponse()


class OtlpReceiver:
    """`with OtlpReceiver() as r:` ... `r.spans()`; `stop()` and `start()` again keep the port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[ReceivedRequest] = []
        self._metric_requests: list[metrics_pb.ExportMetricsServiceRequest] = []
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        assert self.port, "the receiver has not been started"
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> OtlpReceiver:
        assert self._server is None, "already running"
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-receiver"),
            # No port sharing (a restart must really own its port); see the module docstring.
            options=[("grpc.so_reuseport", 0), ("grpc.per_message_decompression", 0)])

        def decode(data: bytes) -> ReceivedRequest:
            request, encoding = _decode_wire(data)
            return ReceivedRequest(request, encoding, len(data))

        servicer = _Servicer(self._append)
        handler = grpc.unary_unary_rpc_method_handler(
            servicer.Export, request_deserializer=decode,
            response_serializer=pb.ExportTraceServiceResponse.SerializeToString)
        def decode_metrics(data: bytes) -> metrics_pb.ExportMetricsServiceRequest:
            request: metrics_pb.ExportMetricsServiceRequest = (
                metrics_pb.ExportMetricsServiceRequest.FromString(_decompress(data)))
            return request

        def export_metrics(request: metrics_pb.ExportMetricsServiceRequest,
                           context: grpc.ServicerContext) -> metrics_pb.ExportMetricsServiceResponse:
            with self._lock:
                self._metric_requests.append(request)
            return metrics_pb.ExportMetricsServiceResponse()

        metrics_handler = grpc.unary_unary_rpc_method_handler(
            export_metrics, request_deserializer=decode_metrics,
            response_serializer=metrics_pb.ExportMetricsServiceResponse.SerializeToString)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(_SERVICE, {"Export": handler}),
             grpc.method_handlers_generic_handler(_METRICS_SERVICE, {"Export": metrics_handler})))
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if not port or (self.port and port != self.port):
            raise RuntimeError(f"OTLP receiver cannot bind 127.0.0.1:{self.port}")
        server.start()
        self.port, self._server = port, server
        return self

    def stop(self, grace: float = 0.5) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait(grace + 5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- what arrived (safe from any thread) ----------------------------------
    def _append(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def metric_requests(self) -> list[metrics_pb.ExportMetricsServiceRequest]:
        """Metrics pushes received (MetricsService/Export), decompressed and parsed."""
        with self._lock:
            return list(self._metric_requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def spans(self) -> list[ReceivedSpan]:
        out: list[ReceivedSpan] = []
        for received in self.requests():
            for rs in received.request.resource_spans:
                resource = decode_attributes(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.append(ReceivedSpan(
                            resource=resource, name=span.name, trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                            kind=Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                            attributes=decode_attributes(span.attributes)))
        return out

    def _check(self, predicate: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan] | None:
        spans = self.spans()
        return spans if predicate(spans) else None

    def _timed_out(self, timeout: float) -> AssertionError:
        names = sorted({s.name for s in self.spans()})
        return AssertionError(f"OTLP receiver: condition not met within {timeout}s; "
                              f"{len(self.requests())} requests, span names {names}")

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool],
                 timeout: float = 10) -> list[ReceivedSpan]:
        """Poll (blocking) until predicate(all spans) holds; returns the spans."""
        deadline = time.monotonic() + timeout
        while (spans := self._check(predicate)) is None:
            if time.monotonic() > deadline:
                raise self._timed_out(timeout)
            time.sleep(0.05)
        return spans

    async def wait_for_async(self, predicate: Callable[[list[ReceivedSpan]], bool],
                             timeout: float = 10) -> list[ReceivedSpan]:
        """`wait_for` for Trio tests: sleeps without blocking the event loop."""
        deadline = trio.current_time() + timeout
        while (spans := self._check(predicate)) is None:
            if trio.current_time() > deadline:
                raise self._timed_out(timeout)
            await trio.sleep(0.05)
        return spans
