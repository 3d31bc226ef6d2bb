"""The HTTP API. Handlers are thin: parse, validate, call the node, answer."""

from __future__ import annotations

import time

from quart import Blueprint, Response, request

from server.errors import InvalidInput, NotFound, RequestError, TooLarge
from server.http.common import json_response, node, read_json
from server.http.openapi import openapi_document
from server.http.ws import DEFAULT_ROOM
from server.validation import check_key, check_room, check_value_size

api = Blueprint("api", __name__)


@api.get("/")
async def index() -> Response:
    # The original's answer; the header points people at the page.
    return Response("Hello World", content_type="text/plain; charset=utf-8",
                    headers={"Link": '</chat>; rel="alternate"; type="text/html"'})


@api.get("/health")
async def health() -> Response:
    n = node()
    return json_response({"status": "ok", "node": n.name,
                          "uptime_s": round(time.monotonic() - n.started_at, 3),
                          "connections": len(n.hub.connections)})


@api.get("/metrics")
async def metrics() -> Response:
    """Prometheus text format, from the node's own registry (collected on this thread:
    a scrape every few seconds is a few hundred microseconds of work)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    body = generate_latest(node().metrics_handle.registry)
    return Response(body, content_type=CONTENT_TYPE_LATEST)


@api.get("/debug/telemetry")
async def debug_telemetry() -> Response:
    """Effective telemetry configuration and the exporter's live counters."""
    from tracing.debug_report import telemetry_report

    n = node()
    return json_response(telemetry_report(n.telemetry, n.name))


@api.get("/nodes")
async def nodes() -> Response:
    """The original's shape: live members, self first. `?detail=1` adds `members`:
    status, addresses and last-seen time of every member, down ones included."""
    n = node()
    out: dict[str, object] = {"nodes": n.live_members()}
    if request.args.get("detail") in ("1", "true", "yes"):
        out["members"] = n.describe_members()
    return json_response(out)


@api.post("/kv")
async def kv_post() -> Response:
    """The original's write: {"key": str, "value": str}; Ecto-style field errors."""
    try:
        body = await read_json()
    except InvalidInput as exc:
        return json_response({"errors": {"body": [exc.message]}}, 400)
    if not isinstance(body, dict):
        return json_response({"errors": {"body": ["must be a JSON object"]}}, 400)
    errors: dict[str, list[str]] = {}
    status = 400
    try:
        check_key(body.get("key"))
    except RequestError as exc:
        errors["key"] = [exc.message]
    value = body.get("value")
    if value is None:
        errors["value"] = ["is required"]
    elif not isinstance(value, str):
        errors["value"] = ["must be a string (use PUT /kv/{key} for other JSON values)"]
    else:
        try:
            check_value_size(value, node().settings.max_value_bytes)
        except TooLarge as exc:
            errors["value"] = [exc.message]
            status = 413
    if errors:
        return json_response({"errors": errors}, 400 if len(errors) > 1 or status == 400 else status)
    n = node()
    entry = await n.kv.put(body["key"], value)
    return json_response({"status": "ok", "node": n.name, "version": entry.version.to_json()})


@api.get("/kv/<path:key>")
async def kv_get(key: str) -> Response:
    read = await node().kv.get(check_key(key))
    if read.entry is None:
        return json_response({"error": "not found"}, 404)
    return json_response({"value": read.entry.value, "from_node": read.from_node,
                          "version": read.entry.version.to_json()})


@api.put("/kv/<path:key>")
async def kv_put(key: str) -> Response:
    """Any JSON value; the body is the value itself."""
    n = node()
    check_key(key)
    value = await read_json()
    check_value_size(value, n.settings.max_value_bytes)
    entry = await n.kv.put(key, value)
    return json_response({"status": "ok", "node": n.name, "version": entry.version.to_json()})


@api.delete("/kv/<path:key>")
async def kv_delete(key: str) -> Response:
    n = node()
    if not await n.kv.delete(check_key(key)):
        return json_response({"error": "not found"}, 404)
    return json_response({"status": "ok", "node": n.name, "deleted": True})


@api.get("/rooms")
async def rooms() -> Response:
    hub = node().hub
    return json_response({"rooms": [
        {"room": name, "members": members, "messages": len(hub.history(name))}
        for name, members in hub.room_counts().items()]})


@api.get("/rooms/<room>")
async def room(room: str) -> Response:
    """A room with members on some reachable node or history here; `default`, the
    plain protocol's room that every plain client is in, always answers (empty on a
    fresh node)."""
    hub = node().hub
    name = check_room(room)
    await hub.sync_history(name)
    members = hub.members(name)
    if name != DEFAULT_ROOM and hub.rooms.get(name) is None and not members:
        raise NotFound(f"no room {room!r}")
    return json_response({"room": name, "members": members,
                          "history": [m.to_json() for m in hub.history(name)]})


@api.get("/api/openapi")
async def openapi() -> Response:
    return json_response(openapi_document())
