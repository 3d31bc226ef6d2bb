"""OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf: a real node process posts its spans, metrics
and logs to a real OTLP/HTTP receiver (POST /v1/traces, /v1/metrics, /v1/logs, protobuf
bodies, gzip-compressed as the node's default asks), which decodes them with
opentelemetry-proto and answers 200."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest
import trio
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from server.ports import free_port
from tests.e2e.otlp_receiver import decode_attributes
from tests.e2e.processes import node_process

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT = 5.0  # the node's default shutdown_timeout
T = TypeVar("T")

# path -> (request message, response message)
SERVICES: dict[str, tuple[Any, Any]] = {
    "/v1/traces": (trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse),
    "/v1/metrics": (metrics_pb.ExportMetricsServiceRequest, metrics_pb.ExportMetricsServiceResponse),
    "/v1/logs": (logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse),
}


@dataclass(frozen=True)
class Received:
    path: str
    encoding: str  # the Content-Encoding header ("identity" when none)
    content_type: str
    request: Any  # the decoded Export*ServiceRequest


def _decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class OtlpHttpReceiver:
    """A minimal OTLP/HTTP collector on 127.0.0.1, on its own threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self.errors: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                service = SERVICES.get(self.path)
                if service is None:
                    receiver._error(f"POST to unknown path {self.path}")
                    self.send_error(404)
                    return
                encoding = self.headers.get("Content-Encoding", "identity").lower()
                try:
                    raw = _decompress(body, encoding)
                    request = service[0].FromString(raw)
                except Exception as exc:
                    receiver._error(f"{self.path}: undecodable body ({encoding}): {exc!r}")
                    self.send_error(400)
                    return
                receiver._add(Received(self.path, encoding, self.headers.get("Content-Type", ""), request))
                answer = service[1]().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet

        for attempt in range(3):  # the port may be taken between free_port() and bind
            try:
                self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
                break
            except OSError:
                if attempt == 2:
                    raise
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="otlp-http-receiver", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _add(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)

    def _error(self, message: str) -> None:
        with self._lock:
            self.errors.append(message)

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """(resource attributes, span) for every span received."""
        return [(decode_attributes(rs.resource.attributes), span)
                for r in self.received("/v1/traces") for rs in r.request.resource_spans
                for ss in rs.scope_spans for span in ss.spans]

    def metric_names(self) -> set[str]:
        return {m.name for r in self.received("/v1/metrics") for rm in r.request.resource_metrics
                for sm in rm.scope_metrics for m in sm.metrics}

    def log_bodies(self) -> list[str]:
        return [lr.body.string_value for r in self.received("/v1/logs") for rl in r.request.resource_logs
                for sl in rl.scope_logs for lr in sl.log_records]

    async def wait_for(self, find: Callable[[], T | None], what: str, timeout: float = 20) -> T:
        """Poll until find() returns something (bounded: fails after timeout)."""
        with trio.move_on_after(timeout):
            while (found := find()) is None:
                await trio.sleep(0.1)
            return found
        raise AssertionError(f"OTLP/HTTP receiver: no {what} within {timeout}s; received "
                             f"{[(r.path, r.encoding) for r in self.received()]}, errors {self.errors}")


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as r:
        yield r


async def test_spans_metrics_and_logs_arrive_over_otlp_http(receiver: OtlpHttpReceiver) -> None:
    env: dict[str, str | None] = {"OTEL_SDK_DISABLED": None,
                                  "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                  "OTEL_LOGS_EXPORTER": "otlp",
                                  "OTEL_BSP_SCHEDULE_DELAY": "200",
                                  "OTEL_METRIC_EXPORT_INTERVAL": "500"}
    async with node_process(env) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            r = await http.get("/nodes")
            assert r.status_code == 200, r.text
            report = (await http.get("/debug/telemetry")).json()
            assert report["traces"]["protocol"] == "http/protobuf", report
            assert report["traces"]["endpoint"] == f"{receiver.endpoint}/v1/traces", report

            # While the node runs: its span (batches every 200 ms) and its metrics (every 500 ms).
            resource, span = await receiver.wait_for(
                lambda: next(((res, s) for res, s in receiver.spans() if s.name == "GET /nodes"), None),
                "GET /nodes span")
            assert resource["service.name"] == "webserver"
            assert resource["service.instance.id"] == node.node_name
            assert decode_attributes(span.attributes)["http.response.status_code"] == 200
            await receiver.wait_for(
                lambda: True if "http.server.request.duration" in receiver.metric_names() else None,
                "http.server.request.duration metric")
            assert (await http.get("/debug/telemetry")).json()["export"]["failing"] is False
        assert await node.terminate(SHUTDOWN_TIMEOUT + 10) == 0, node.describe()
        stderr = node.stderr()

    # Logs are flushed at shutdown at the latest.
    await receiver.wait_for(lambda: receiver.log_bodies() or None, "log record", timeout=10)
    received = receiver.received()
    assert {r.path for r in received} == set(SERVICES), [r.path for r in received]
    # The node's default compression (gzip) and the OTLP/HTTP binary content type.
    assert all(r.encoding == "gzip" and r.content_type == "application/x-protobuf" for r in received), \
        [(r.path, r.encoding, r.content_type) for r in received]
    assert not receiver.errors, receiver.errors
    assert "cannot export" not in stderr and "cannot push" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
