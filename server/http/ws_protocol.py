"""The `webserver.v1` JSON protocol: one request object per text frame, one reply.

Requests: join, leave, chat, kv.get, kv.put, kv.delete, ping; any may carry a
`ref` (string or number) that the reply echoes. Replies are `{"type": "ok",
"op": ...}` (or `pong`), failures `{"type": "error", "op", "code", "message"}`.
Pushes: `message`, `presence`, `error`; several queued frames may arrive in one
`{"type": "batch", "frames": [...]}`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from server.chat.connection import Connection
from server.chat.hub import Hub, encode
from server.engine.base import KVStore
from server.errors import InvalidInput, RequestError
from server.settings import Settings
from server.validation import check_key, check_room, check_text, check_value_size
from tracing.ids import current_trace_id

Handler = Callable[["JsonSession", dict[str, Any]], Awaitable[dict[str, Any]]]
_HANDLERS: dict[str, Handler] = {}


def _op(name: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[name] = fn
        return fn
    return register


OPS = ("join", "leave", "chat", "kv.get", "kv.put", "kv.delete", "ping")


class FrameRefused(Exception):
    """A frame refused before any handler ran: the error, and the request's `ref` when it
    had a valid one (the error frame echoes it, as any reply does)."""

    def __init__(self, error: RequestError, ref: Any = None) -> None:
        super().__init__(error.describe())
        self.error = error
        self.ref = ref


def parse_request(text: str) -> tuple[str, dict[str, Any]]:
    """Decode a frame into (type, request); raises FrameRefused naming the problem."""
    try:
        request = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FrameRefused(BadJson(f"malformed JSON: {exc.msg} at position {exc.pos}")) from None
    if not isinstance(request, dict):
        raise FrameRefused(InvalidInput("a request must be a JSON object"))
    ref = request.get("ref")
    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (str, int, float))
                            or (isinstance(ref, float) and not math.isfinite(ref))):
        raise FrameRefused(InvalidInput("ref must be a string or a number", field="ref"))
    kind = request.get("type")
    if not isinstance(kind, str):
        raise FrameRefused(InvalidInput("type is required and must be a string", field="type"), ref)
    if kind not in _HANDLERS:
        raise FrameRefused(UnknownType(
            f"unknown message type {kind[:64]!r}; expected one of {', '.join(OPS)}", field="type"), ref)
    return kind, request


def check_chat_text(text: Any, limit: int) -> str:
    """Chat text of either protocol: a string, not blank (empty or only whitespace),
    at most `limit` bytes."""
    checked = check_text(text, limit)
    if not checked.strip():
        raise InvalidInput("can't be blank", field="text")
    return checked


class UnknownType(InvalidInput):
    code = "unknown_type"


class BadJson(InvalidInput):
    code = "bad_json"


def error_frame(exc: RequestError, op: str | None, ref: Any) -> str:
    frame: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.describe()}
    if op is not None:
        frame["op"] = op
    if ref is not None:
        frame["ref"] = ref
    return encode(frame)


class JsonSession:
    """Handles the requests of one JSON-protocol connection."""

    __slots__ = ("conn", "hub", "kv", "settings")

    def __init__(self, conn: Connection, hub: Hub, kv: KVStore, settings: Settings) -> None:
        self.conn = conn
        self.hub = hub
        self.kv = kv
        self.settings = settings

    async def handle(self, kind: str, request: dict[str, Any]) -> str:
        """Run one request and return the encoded reply."""
        reply = await _HANDLERS[kind](self, request)
        if "type" not in reply:
            reply = {"type": "ok", "op": kind, **reply}
        if request.get("ref") is not None:
            reply["ref"] = request["ref"]
        trace_id = current_trace_id()
        if trace_id is not None:
            reply["trace_id"] = trace_id
        return encode(reply)


async def _entry_json(kv: KVStore, key: str) -> dict[str, Any]:
    read = await kv.get(key)
    if read.entry is None:
        return {"key": key, "found": False, "value": None, "from_node": read.from_node, "version": None}
    return {"key": key, "found": True, "value": read.entry.value, "from_node": read.from_node,
            "version": read.entry.version.to_json()}


@_op("ping")
async def _ping(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    return {"type": "pong"}


@_op("join")
async def _join(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    name = check_room(r.get("room"))
    if name not in s.conn.rooms:
        await s.hub.sync_history(name)
    room = s.hub.join(s.conn, name)
    return {"room": name, "members": s.hub.members(name),
            "history": [{"type": "message", **m.to_json()} for m in room.history]}


@_op("leave")
async def _leave(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    name = check_room(r.get("room"))
    s.hub.leave(s.conn, name)
    return {"room": name}


@_op("chat")
async def _chat(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    name = check_room(r.get("room"))
    text = check_chat_text(r.get("text"), s.settings.max_chat_text_bytes)
    message = await s.hub.publish(s.conn, name, text)
    return {"room": name, "id": message.id, "timestamp": message.timestamp}


@_op("kv.get")
async def _kv_get(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    return await _entry_json(s.kv, check_key(r.get("key")))


@_op("kv.put")
async def _kv_put(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    key = check_key(r.get("key"))
    if "value" not in r:
        raise InvalidInput("is required", field="value")
    check_value_size(r["value"], s.settings.max_value_bytes)
    entry = await s.kv.put(key, r["value"])
    return {"key": key, "node": s.kv.node_name, "version": entry.version.to_json()}


@_op("kv.delete")
async def _kv_delete(s: JsonSession, r: dict[str, Any]) -> dict[str, Any]:
    key = check_key(r.get("key"))
    return {"key": key, "deleted": await s.kv.delete(key)}
