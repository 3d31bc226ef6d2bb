"""ASGI middleware: one SERVER span per HTTP request, named `{METHOD} {route}`.

Replaces opentelemetry-instrumentation-asgi, which names spans by raw path, adds
a child span per receive/send event and cost 18-38% of throughput here. The
route template is not known until the framework has matched the request, so
the app calls `name_span_for_route` (a Quart before_request hook) to rename the
span; an unmatched request keeps the bare `{METHOD}` name, as the HTTP
conventions say.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import SpanKind, Status, StatusCode

from tracing import spans as S

if TYPE_CHECKING:
    from tracing.metrics import Metrics

ROUTE_KEY = "webserver.route"  # the matched route template, put in the scope by the app
# The ASGI types are Hypercorn's (the server we run on); an application is any callable of them.
ASGIApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]


class _HeaderGetter:
    """Reads W3C trace headers straight from ASGI's list of byte pairs."""

    def get(self, carrier: list[tuple[bytes, bytes]], key: str) -> list[str] | None:
        k = key.encode("latin-1")
        values = [v.decode("latin-1") for name, v in carrier if name == k]
        return values or None

    def keys(self, carrier: list[tuple[bytes, bytes]]) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier]


_GETTER = _HeaderGetter()
_CONTEXT_HEADERS = frozenset((b"traceparent", b"tracestate", b"baggage"))
# An explicit empty context: a request span is a root unless the client sent one,
# whatever happens to be current in the task that serves it.
_ROOT = otel_context.Context()


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for k, v in headers:
        if k == name:
            return v.decode("latin-1")
    return None


class TracingMiddleware:
    """The request span and, when given `metrics`, `http.server.request.duration` and
    `http.server.active_requests` (recorded while the span is current, so a duration
    keeps its trace as exemplar). The route template comes from the scope
    (`ROUTE_KEY`, set by the app once it has matched the request): with tracing off
    there is no span to read it from, and an unmatched request gets no `http.route`,
    so raw paths never become metric labels."""

    def __init__(self, app: ASGIApp, tracer: trace.Tracer, metrics: Metrics | None = None) -> None:
        self.app = app
        self.tracer = tracer
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        path = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        headers = scope.get("headers", [])
        attributes: dict[str, Any] = {
            S.HTTP_METHOD: method, S.HTTP_REQUEST_METHOD: method,
            S.HTTP_TARGET: S.clip(path + ("?" + query if query else "")),
            S.URL_PATH: S.clip(path), S.URL_SCHEME: scope.get("scheme", "http"),
            S.NETWORK_PROTOCOL_VERSION: scope.get("http_version", "1.1"),
        }
        if query:
            attributes[S.URL_QUERY] = S.clip(query)
        if (agent := _header(headers, b"user-agent")) is not None:
            attributes[S.HTTP_USER_AGENT] = attributes[S.USER_AGENT_ORIGINAL] = S.clip(agent)
        if client := scope.get("client"):
            attributes[S.CLIENT_ADDRESS] = client[0]
        if server := scope.get("server"):
            attributes[S.SERVER_ADDRESS], attributes[S.SERVER_PORT] = server[0], server[1]
        # Most requests carry no trace context: skip the propagators then.
        has_context = any(name in _CONTEXT_HEADERS for name, _ in headers)
        parent = extract(headers, getter=_GETTER) if has_context else _ROOT  # type: ignore[arg-type]
        span = self.tracer.start_span(method, context=parent, kind=SpanKind.SERVER,
                                      attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        status = 0
        metrics = self.metrics
        if metrics is not None:
            active = {S.HTTP_REQUEST_METHOD: method, S.URL_SCHEME: attributes[S.URL_SCHEME]}
            metrics.http_active.add(1, active)
            started = time.perf_counter()

        async def send_and_note_status(message: ASGISendEvent) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except trio.Cancelled:
            raise  # the client left: a normal end, status stays unset
        except Exception as exc:
            S.fail(span, exc)
            status = status or 500
            raise
        finally:
            if metrics is not None:
                metrics.http_active.add(-1, active)
                if status:  # no response (the client left): nothing served to measure
                    _record_duration(metrics, scope, method, status, time.perf_counter() - started)
            if status:
                span.set_attributes({S.HTTP_STATUS_CODE: status, S.HTTP_RESPONSE_STATUS_CODE: status})
                if status >= 500:
                    if not _has_error(span):  # keep the handler's exception detail
                        span.set_attribute(S.ERROR_TYPE, str(status))
                        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            span.end()
            otel_context.detach(token)


def _record_duration(metrics: Metrics, scope: Scope, method: str, status: int, seconds: float) -> None:
    labels: dict[str, Any] = {S.HTTP_REQUEST_METHOD: method, S.HTTP_RESPONSE_STATUS_CODE: status}
    if route := scope.get(ROUTE_KEY):
        labels[S.HTTP_ROUTE] = route
    if status >= 500:
        labels[S.ERROR_TYPE] = str(status)
    metrics.http_duration.record(seconds, labels)


def _has_error(span: trace.Span) -> bool:
    status = getattr(span, "status", None)
    return status is not None and status.status_code is StatusCode.ERROR


def name_span_for_route(method: str, template: str) -> None:
    """Give the current request span its route: `GET /kv/{key}`."""
    span = trace.get_current_span()
    span.update_name(f"{method} {template}")
    span.set_attribute(S.HTTP_ROUTE, template)
