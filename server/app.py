"""create_app(node): the Quart-Trio app for HTTP, and the ASGI entry that puts the
tracing middleware and the WebSocket endpoint in front of it."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    Scope,
    WebsocketResponseBodyEvent,
    WebsocketResponseStartEvent,
)
from opentelemetry import trace
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from server.errors import RequestError
from server.http.common import json_response
from server.http.pages import pages
from server.http.routes import api
from server.http.traces_api import traces_api
from server.http.ws import websocket_endpoint
from tracing import spans as S
from tracing.http import ROUTE_KEY, ASGIApp, TracingMiddleware, name_span_for_route

if TYPE_CHECKING:
    from server.node import Node

log = logging.getLogger(__name__)


def create_app(node: Node) -> QuartTrio:
    app = QuartTrio("webserver", static_folder=None)  # /static/ is ours (server/http/pages.py)
    app.config["NODE"] = node
    app.config["MAX_CONTENT_LENGTH"] = node.settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    app.register_blueprint(api)
    app.register_blueprint(traces_api)
    app.register_blueprint(pages)
    templates = {rule.rule: S.route_template(rule.rule) for rule in app.url_map.iter_rules()}

    @app.before_request
    async def name_span() -> None:
        rule = request.url_rule
        if rule is not None:
            template = templates.get(rule.rule) or S.route_template(rule.rule)
            request.scope[ROUTE_KEY] = template  # type: ignore[literal-required]  # metrics, tracing or not
            name_span_for_route(request.method, template)

    @app.errorhandler(RequestError)
    async def request_error(exc: RequestError) -> Response:
        return json_response({"error": exc.describe()}, exc.status)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        messages = {404: "not found", 405: f"method {request.method} not allowed here",
                    413: f"request body over {node.settings.max_body_bytes} bytes"}
        code = exc.code or 500
        response = json_response({"error": messages.get(code, exc.description or exc.name)}, code)
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        if code == 413:
            # The rest of the body is never read: close rather than keep a
            # connection whose next request would start mid-body.
            response.headers["Connection"] = "close"
        return response

    @app.errorhandler(Exception)
    async def server_fault(exc: Exception) -> Response:
        # Quart answers the fault itself, so the middleware never sees it: record here.
        S.fail(trace.get_current_span(), exc)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_response({"error": "internal server error"}, 500)

    return app


def create_asgi(node: Node, quart_app: QuartTrio | None = None) -> ASGIApp:
    """The whole ASGI application: /ws to our endpoint, HTTP through tracing to Quart."""
    quart = quart_app or create_app(node)
    http = TracingMiddleware(quart, node.tracer, node.metrics)  # type: ignore[arg-type]

    async def app(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "websocket":
            if scope["path"] == "/ws":
                await websocket_endpoint(node, scope, receive, send)
            else:
                await _reject_websocket(receive, send)
            return
        await http(scope, receive, send)

    app.quart = quart  # type: ignore[attr-defined]
    return app


async def _reject_websocket(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """A WebSocket to any path but /ws: answer the upgrade with a plain 404."""
    await receive()
    body = json.dumps({"error": "not found"}).encode()
    await send(WebsocketResponseStartEvent(type="websocket.http.response.start", status=404,
                                           headers=[(b"content-type", b"application/json")]))
    await send(WebsocketResponseBodyEvent(type="websocket.http.response.body", body=body,
                                          more_body=False))
