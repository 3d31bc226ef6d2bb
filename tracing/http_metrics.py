"""ASGI middleware: `http.server.request.duration` and `http.server.active_requests`.

Runs inside the tracing middleware, so a duration recorded while the request
span is current keeps that span as its exemplar. The route template comes from
the scope (`ROUTE_KEY`, set by the app once it has matched the request): with
tracing off there is no span to read it from. An unmatched request has no
`http.route`, as the conventions say, so unknown paths cannot explode the
number of series.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from tracing import spans as S
from tracing.http import ASGIApp, Receive, Scope, Send
from tracing.metrics import Metrics

ROUTE_KEY = "webserver.route"


class HttpMetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        active = {S.HTTP_REQUEST_METHOD: method, S.URL_SCHEME: scope.get("scheme", "http")}
        self.metrics.http_active.add(1, active)
        started = time.perf_counter()
        status = 0

        async def send_and_note_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        except trio.Cancelled:
            status = 0  # the client left: no response, nothing to count as served
            raise
        except Exception:
            status = status or 500
            raise
        finally:
            self.metrics.http_active.add(-1, active)
            if status:
                attributes: dict[str, Any] = {S.HTTP_REQUEST_METHOD: method,
                                              S.HTTP_RESPONSE_STATUS_CODE: status}
                if route := scope.get(ROUTE_KEY):
                    attributes[S.HTTP_ROUTE] = route
                if status >= 500:
                    attributes[S.ERROR_TYPE] = str(status)
                self.metrics.http_duration.record(time.perf_counter() - started, attributes)
