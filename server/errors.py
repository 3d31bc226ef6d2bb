"""The exception tree.

    WebserverError
    ├── ConfigError        a setting is unknown, mistyped or out of range (startup)
    └── RequestError       a client sent something we refuse; carries an HTTP status
        ├── InvalidInput   malformed or ill-typed fields, bad keys or names (400)
        ├── TooLarge       a body, value or text over its limit (413)
        ├── NotFound       no such key or room (404)
        └── Unavailable    the node cannot take it now (503)
            ├── StoreFull      no room for another key (507)
            └── EngineDown     the engine's server (Valkey) is unreachable (503)

Request errors are answered, never logged as server faults: they are the
client's doing, so their spans stay unset (4xx), not ERROR.
"""

from __future__ import annotations


class WebserverError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(WebserverError):
    """Settings could not be loaded; the message names the key and the source."""


class RequestError(WebserverError):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def describe(self) -> str:
        """The message with the field it is about: `key: must be at most 256 bytes`."""
        if not self.field or self.message.startswith(self.field):
            return self.message
        return f"{self.field}: {self.message}"


class InvalidInput(RequestError):
    status = 400
    code = "bad_request"


class TooLarge(RequestError):
    status = 413
    code = "too_large"


class NotFound(RequestError):
    status = 404
    code = "not_found"


class Unavailable(RequestError):
    status = 503
    code = "unavailable"


class StoreFull(Unavailable):
    status = 507
    code = "store_full"


class EngineDown(Unavailable):
    """The engine's server did not answer (down, restarting, or too slow)."""

    code = "engine_unavailable"
    outcome = "engine_down"  # the KV metric's kv.outcome
