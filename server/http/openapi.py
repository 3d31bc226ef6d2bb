"""The OpenAPI 3 document of the HTTP API. A test checks that every route the app
serves is described here, and nothing that it does not serve."""

from __future__ import annotations

from typing import Any

from server.validation import MAX_KEY_BYTES


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_FIELD_ERRORS = {"type": "object", "properties": {"errors": {
    "type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}}}
_VERSION = {"type": "object", "properties": {
    "wall_ms": {"type": "integer"}, "counter": {"type": "integer"}, "writer": {"type": "string"}}}
_KEY_PARAM = {"name": "key", "in": "path", "required": True,
              "description": f"1-{MAX_KEY_BYTES} bytes of UTF-8, no control characters; may contain '/'",
              "schema": {"type": "string", "minLength": 1}}
_ROOM_PARAM = {"name": "room", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$"}}
_MESSAGE = {"type": "object", "properties": {
    "room": {"type": "string"}, "user": {"type": "string"}, "text": {"type": "string"},
    "timestamp": {"type": "string", "format": "date-time"}, "id": {"type": "string"},
    "node": {"type": "string"}, "trace_id": {"type": "string"}}}
_MEMBER = {"type": "object", "properties": {"user": {"type": "string"}, "node": {"type": "string"}}}
_NOT_FOUND = _json(_ERROR, "Not found: `{\"error\": \"not found\"}`")
_BAD = _json(_ERROR, "Invalid input; the message names the problem")
_TOO_LARGE = _json(_ERROR, "Body or value over its size limit")
_UNAVAILABLE = {"$ref": "#/components/responses/Unavailable"}
_STORE_FULL = {"$ref": "#/components/responses/StoreFull"}
_ROOM_NOT_FOUND = _json(_ERROR, (
    "No member of the room on any reachable node and no history of it here, e.g. "
    "`{\"error\": \"no room 'lobby'\"}`. `default`, the plain protocol's room, always answers 200"))

_COMPONENTS = {"responses": {
    "MethodNotAllowed": {
        "description": ("A path this API serves, asked with a method it does not serve (every path: "
                        "the methods it lists here, plus HEAD with GET, and OPTIONS)"),
        "headers": {"Allow": {"description": "The methods the path serves, e.g. `GET, HEAD, OPTIONS`",
                              "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": _ERROR, "example": {
            "error": "method DELETE not allowed here"}}}},
    "Unavailable": _json(_ERROR, (
        "The key's quorum was not reached within cluster_request_timeout (the message says how many "
        "replicas answered; a write may still reach some of them), or the valkey engine's server "
        "did not answer")),
    "StoreFull": _json(_ERROR, (
        "A replica of the key holds its limit of keys (max_keys; tombstones count, and in a cluster a "
        "delete writes one on every replica) or the valkey server is out of memory; e.g. "
        "`{\"error\": \"the store holds its limit of 100000 keys\"}`")),
}}


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "webserver", "version": "0.1.0", "description": (
            "HTTP API of a webserver node. WebSocket chat is at `GET /ws` (see that path). "
            "Unknown paths answer 404 `{\"error\": \"not found\"}`. A path below asked with a method "
            "it does not list answers 405 with an `Allow` header, for every path alike: "
            "`#/components/responses/MethodNotAllowed`.")},
        "components": _COMPONENTS,
        "paths": {
            "/": {"get": {"summary": "Liveness greeting", "responses": {"200": {
                "description": "`Hello World`", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/health": {"get": {"summary": "Node health", "responses": {"200": _json({
                "type": "object", "properties": {"status": {"type": "string"}, "node": {"type": "string"},
                                                 "uptime_s": {"type": "number"},
                                                 "connections": {"type": "integer"}}}, "Healthy")}}},
            "/nodes": {"get": {"summary": "Live cluster members, this node first", "responses": {
                "200": _json({"type": "object", "properties": {"nodes": {
                    "type": "array", "items": {"type": "string"}}}}, "Node names (name@host:port)")}}},
            "/debug/traces/api/traces": {"get": {
                "summary": "Recent traces in this node's span buffer, newest first",
                "parameters": [
                    {"name": "name", "in": "query", "schema": {"type": "string"},
                     "description": "Keep traces with a span whose name contains this (case-insensitive)"},
                    {"name": "min_ms", "in": "query", "schema": {"type": "number", "minimum": 0},
                     "description": "Keep traces lasting at least this many milliseconds here"},
                    {"name": "errors", "in": "query", "schema": {"type": "string", "enum": ["1", "true"]},
                     "description": "Keep traces with at least one ERROR span"},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}}],
                "responses": {"200": _json({"type": "object", "properties": {
                    "node": {"type": "string"}, "enabled": {"type": "boolean"},
                    "traces": {"type": "array", "items": {"type": "object", "properties": {
                        "trace_id": {"type": "string"}, "root_name": {"type": "string"},
                        "start_unix_nano": {"type": "integer"}, "duration_ms": {"type": "number"},
                        "span_count": {"type": "integer"},
                        "nodes": {"type": "array", "items": {"type": "string"}},
                        "errors": {"type": "integer"}}}}}},
                    "Trace summaries (`enabled` is false when trace_buffer_spans = 0)"),
                    "400": _BAD}}},
            "/debug/traces/api/traces/{trace_id}": {"get": {
                "summary": "One trace's spans, gathered from this node and every other member",
                "parameters": [
                    {"name": "trace_id", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"}},
                    {"name": "local", "in": "query", "schema": {"type": "string", "enum": ["1", "true"]},
                     "description": "Only this node's spans; ask no peer"}],
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "trace_id": {"type": "string"},
                        "spans": {"type": "array", "items": {"type": "object", "description": (
                            "trace_id, span_id, parent_span_id (or null), name, kind, start_unix_nano, "
                            "end_unix_nano, duration_ms, status {code, description}, attributes, "
                            "events [{name, time_unix_nano, attributes}], links [{trace_id, span_id}], "
                            "node")}},
                        "nodes": {"type": "array", "items": {"type": "string"}},
                        "partial": {"type": "boolean"},
                        "missing": {"type": "array", "items": {"type": "object", "properties": {
                            "node": {"type": "string"}, "reason": {"type": "string"}}}},
                        "truncated": {"type": "array", "items": {"type": "string"}}}},
                        "Spans by start time; `nodes` answered, `missing` did not (down, timed out), "
                        "`truncated` answered with part of their spans (cluster message size limit)"),
                    "400": _BAD,
                    "404": _json(_ERROR, "No member that answered has spans of this trace")}}},
            "/debug/telemetry": {"get": {"summary": "Telemetry configuration and exporter health",
                                         "responses": {"200": _json({"type": "object"}, (
                                             "Endpoint, protocol, compression, sampler and rules, batch "
                                             "settings; spans started, queued, exported, dropped, failed "
                                             "exports and the last export error with its time"))}}},
            "/metrics": {"get": {"summary": "Prometheus scrape of this node's metrics", "responses": {
                "200": {"description": "Prometheus text exposition format 0.0.4 (names in README)",
                        "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/kv": {"post": {
                "summary": "Store a string value (the original's write)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["key", "value"], "properties": {
                        "key": {"type": "string"}, "value": {"type": "string"}}}}}},
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "status": {"type": "string", "enum": ["ok"]}, "node": {"type": "string"},
                        "version": _VERSION}}, "Stored"),
                    "400": _json(_FIELD_ERRORS,
                                 "Field errors, e.g. `{\"errors\": {\"key\": [\"can't be blank\"]}}`"),
                    "413": _json(_FIELD_ERRORS, "Body or value too large"),
                    "503": _UNAVAILABLE, "507": _STORE_FULL,
                }}},
            "/kv/{key}": {
                "parameters": [_KEY_PARAM],
                "get": {"summary": "Read a value", "responses": {
                    "200": _json({"type": "object", "properties": {
                        "value": {"description": "any JSON value"}, "from_node": {"type": "string"},
                        "version": _VERSION}}, "The value and the node that served it"),
                    "400": _BAD, "404": _NOT_FOUND, "503": _UNAVAILABLE}},
                "put": {"summary": "Store any JSON value (the body is the value itself)",
                        "requestBody": {"required": True, "content": {"application/json": {
                            "schema": {"description": "any JSON value, at most 65536 bytes encoded"}}}},
                        "responses": {
                            "200": _json({"type": "object", "properties": {
                                "status": {"type": "string"}, "node": {"type": "string"},
                                "version": _VERSION}}, "Stored"),
                            "400": _BAD, "413": _TOO_LARGE, "503": _UNAVAILABLE,
                            "507": _STORE_FULL}},
                "delete": {"summary": "Delete a key (a tombstone)", "responses": {
                    "200": _json({"type": "object", "properties": {
                        "status": {"type": "string"}, "node": {"type": "string"},
                        "deleted": {"type": "boolean"}}}, "Deleted"),
                    "400": _BAD,
                    "404": _json(_ERROR, (
                        "No replica that answered had a live value: `{\"error\": \"not found\"}`")),
                    "503": _UNAVAILABLE,
                    "507": _STORE_FULL}},
            },
            "/rooms": {"get": {
                "summary": "Chat rooms of the whole cluster, with member counts",
                "description": ("Rooms with members on any reachable node, and rooms whose history this "
                                "node holds. `members`: members on every reachable node; `messages`: the "
                                "history this node holds"),
                "responses": {"200": _json({
                    "type": "object", "properties": {"rooms": {"type": "array", "items": {
                        "type": "object", "properties": {"room": {"type": "string"},
                                                         "members": {"type": "integer"},
                                                         "messages": {"type": "integer"}}}}}},
                    "Rooms")}}},
            "/rooms/{room}": {"parameters": [_ROOM_PARAM], "get": {
                "summary": "A room's members and recent history (oldest first)", "responses": {
                    "200": _json({"type": "object", "properties": {
                        "room": {"type": "string"}, "members": {"type": "array", "items": _MEMBER},
                        "history": {"type": "array", "items": _MESSAGE}}}, "The room"),
                    "400": _BAD, "404": _ROOM_NOT_FOUND}}},
            "/api/openapi": {"get": {"summary": "This document", "responses": {
                "200": _json({"type": "object"}, "OpenAPI 3 document")}}},
            "/ws": {"get": {
                "summary": "WebSocket chat (upgrade)",
                "description": (
                    "Plain protocol (the original): `/ws?username=NAME`, room `default`, a text frame "
                    "is chat text; other members receive `{user, text, timestamp}`; the last 50 "
                    "messages arrive on connect. JSON protocol: subprotocol `webserver.v1` or "
                    "`?protocol=json`; see README. Close codes: 1001 shutdown, 1003 binary frame, "
                    "1008 slow consumer or bad username, 1009 message too big, 1011 server error."),
                "parameters": [
                    {"name": "username", "in": "query", "schema": {"type": "string", "default": "Guest"}},
                    {"name": "protocol", "in": "query",
                     "schema": {"type": "string", "enum": ["text", "json"]}}],
                "responses": {"101": {"description": "Switching protocols"}}}},
            "/chat": {"get": {
                "summary": "Chat page (HTML): rooms, presence, KV panel, cluster nodes",
                "responses": {"200": {"description": "An HTML page",
                                      "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/debug/traces": {"get": {
                "summary": "Trace viewer (HTML): recent traces and one trace as a waterfall",
                "description": "`/debug/traces#<trace_id>` opens that trace directly.",
                "responses": {"200": {"description": "An HTML page",
                                      "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/favicon.ico": {"get": {
                "summary": "The pages' icon (what browsers ask for by default; also /static/favicon.svg)",
                "responses": {"200": {"description": "An SVG image",
                                      "content": {"image/svg+xml": {"schema": {"type": "string"}}}}}}},
            "/static/{name}": {
                "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"},
                                "description": "a file of server/web (`chat.js`); no `..`, no leading `/`"}],
                "get": {
                    "summary": "A file of the pages (HTML, JavaScript module, CSS or SVG from server/web)",
                    "responses": {"200": {"description": "The file, with `Cache-Control: no-cache`",
                                          "content": {"text/javascript": {"schema": {"type": "string"}},
                                                      "text/css": {"schema": {"type": "string"}},
                                                      "image/svg+xml": {"schema": {"type": "string"}},
                                                      "text/html": {"schema": {"type": "string"}}}},
                                  "404": _NOT_FOUND}}},
        },
    }
