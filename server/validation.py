"""Checks shared by the HTTP and WebSocket front ends, so both refuse the same input
with the same words."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from server.errors import InvalidInput, TooLarge

MAX_KEY_BYTES = 256
MAX_NAME_CHARS = 64
DEFAULT_USERNAME = "Guest"
_ROOM_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def check_key(key: Any, field: str = "key") -> str:
    if key is None:
        raise InvalidInput("is required", field=field)
    if not isinstance(key, str):
        raise InvalidInput("must be a string", field=field)
    if key == "":
        raise InvalidInput("can't be blank", field=field)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidInput(f"must be at most {MAX_KEY_BYTES} bytes", field=field)
    if has_control_chars(key):
        raise InvalidInput("must not contain control characters", field=field)
    return key


def encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def check_value_size(value: Any, limit: int, field: str = "value") -> None:
    size = encoded_size(value)
    if size > limit:
        raise TooLarge(f"must be at most {limit} bytes (got {size})", field=field)


def check_room(room: Any, field: str = "room") -> str:
    if room is None:
        raise InvalidInput("is required", field=field)
    if not isinstance(room, str):
        raise InvalidInput("must be a string", field=field)
    if not _ROOM_RE.fullmatch(room):
        raise InvalidInput("must be 1-64 characters of A-Z a-z 0-9 _ . : -", field=field)
    return room


def check_username(name: str | None) -> str:
    if name is None:
        return DEFAULT_USERNAME
    if not name.strip():
        raise InvalidInput("can't be blank", field="username")
    if len(name) > MAX_NAME_CHARS:
        raise InvalidInput(f"must be at most {MAX_NAME_CHARS} characters", field="username")
    if has_control_chars(name):
        raise InvalidInput("must not contain control characters", field="username")
    return name


def check_text(text: Any, limit: int, field: str = "text") -> str:
    if text is None:
        raise InvalidInput("is required", field=field)
    if not isinstance(text, str):
        raise InvalidInput("must be a string", field=field)
    size = len(text.encode("utf-8"))
    if size > limit:
        raise TooLarge(f"must be at most {limit} bytes (got {size})", field=field)
    return text
