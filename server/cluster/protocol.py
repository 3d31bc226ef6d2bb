"""Cluster messages: a JSON envelope with a version, a type, optional request/reply
ids, the W3C trace context of whoever sent it, and a body. No I/O here.

    {"v": 1, "type": "kv.put", "id": 7, "trace": {"traceparent": "00-..."}, "body": {...}}
    {"v": 1, "type": "reply", "re": 7, "body": {...}}            (or "error": "...")

Frames are decoded only after the link is authenticated (see auth.py); nothing
here ever unpickles or evaluates anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

VERSION = 1
REPLY = "reply"


class ProtocolError(Exception):
    """A frame that is not a valid cluster message; the link is closed."""


@dataclass
class Message:
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # set on requests that expect a reply
    re: int | None = None  # on replies: the request's id
    error: str | None = None  # on replies: why the request failed
    trace: dict[str, str] = field(default_factory=dict)

    def encode(self) -> str:
        out: dict[str, Any] = {"v": VERSION, "type": self.type}
        if self.id is not None:
            out["id"] = self.id
        if self.re is not None:
            out["re"] = self.re
        if self.error is not None:
            out["error"] = self.error
        if self.trace:
            out["trace"] = self.trace
        out["body"] = self.body
        return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


def decode(frame: str | bytes) -> Message:
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("frame is not UTF-8") from None
    try:
        data = json.loads(frame)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ProtocolError("frame is not a JSON object")
    if type(data.get("v")) is not int or data["v"] != VERSION:
        raise ProtocolError(f"unsupported protocol version {data.get('v')!r} (this node speaks {VERSION})")
    kind, body, trace = data.get("type"), data.get("body", {}), data.get("trace", {})
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("type: must be a non-empty string")
    if not isinstance(body, dict):
        raise ProtocolError("body: must be an object")
    if not isinstance(trace, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in trace.items()):
        raise ProtocolError("trace: must be an object of strings")
    ids = {}
    for name in ("id", "re"):
        value = data.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ProtocolError(f"{name}: must be an integer")
        ids[name] = value
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise ProtocolError("error: must be a string")
    return Message(kind, body, ids["id"], ids["re"], error, trace)


def need(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A required body field of the given type, or ProtocolError naming it."""
    value = body.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"body.{name}: missing or of the wrong type")
    return value
