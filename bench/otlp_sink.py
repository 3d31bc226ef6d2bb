"""A minimal live OTLP gRPC trace receiver: accepts every export, counts spans.

`python -m bench.otlp_sink [--port N]` prints "otlp sink listening on
http://127.0.0.1:PORT" and, on SIGTERM or SIGINT, "otlp sink received S spans in
R requests" before exiting. It runs in its own process, on the load
generator's core, so decoding exports never steals the server's CPU.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
from concurrent import futures
from types import FrameType
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

RECEIVED = re.compile(r"otlp sink received (\d+) spans in (\d+) requests")


class CountingTraceService(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.spans = 0
        self.requests = 0

    def Export(self, request: Any, context: Any) -> Any:
        count = sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        with self._lock:
            self.spans += count
            self.requests += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.otlp_sink")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    service = CountingTraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"otlp sink listening on http://127.0.0.1:{port}", flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1).wait(2)
    print(f"otlp sink received {service.spans} spans in {service.requests} requests", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
