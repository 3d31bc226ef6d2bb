"""Mutual HMAC-SHA256 challenge-response for peer links.

Both sides prove they hold the cluster secret without sending it, over fresh
random nonces and both node names, so a recorded handshake cannot be replayed
and a proof for one pair of nodes is useless for another:

    dialer   -> hello     {node, nonce}
    listener -> challenge {node, nonce, proof}   proof = HMAC(secret, "listener" | both nonces | both names)
    dialer   -> auth      {proof}                proof = HMAC(secret, "dialer"   | ...)
    listener -> welcome   {}

Frames before `welcome` are capped at PRE_AUTH_MAX_BYTES and parsed only as
these four small JSON shapes; proofs are compared in constant time. Any
mismatch raises AuthError and the caller closes the link. The steps and checks
are run by the state machines in handshake.py.

Before a peer has proved itself the link reads at most PRE_AUTH_STREAM_BYTES
from it in all (transport.PreAuthStream): the WebSocket connection's own message
limit is cluster_max_message_bytes from the start (trio-websocket cannot change
it later), so this byte budget is what bounds an unauthenticated peer's memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import Any

PRE_AUTH_MAX_BYTES = 2048
# Everything a peer may send before it is authenticated (the HTTP upgrade request
# and the handshake frames, WebSocket framing included), with ample room to spare.
PRE_AUTH_STREAM_BYTES = 16 * 1024
NONCE_BYTES = 32


class AuthError(Exception):
    """The peer failed the handshake (wrong secret, malformed frame, wrong step)."""


class FrameTooBig(AuthError):
    """A frame over PRE_AUTH_MAX_BYTES before authentication: the link is closed with 1009."""

    close_code = 1009


def new_nonce() -> str:
    return secrets.token_hex(NONCE_BYTES)


def proof(secret: bytes, role: str, dialer_nonce: str, listener_nonce: str,
          dialer: str, listener: str) -> str:
    # Length-prefixed parts so no two different inputs concatenate to the same bytes.
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (role, dialer_nonce, listener_nonce, dialer, listener):
        raw = part.encode("utf-8")
        mac.update(len(raw).to_bytes(4, "big") + raw)
    return mac.hexdigest()


def verify(expected: str, given: Any) -> bool:
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))


def frame(kind: str, **fields: str) -> str:
    return json.dumps({"v": 1, "type": kind, **fields}, separators=(",", ":"))


def parse(raw: str | bytes, kind: str, *names: str) -> dict[str, str]:
    """One pre-auth frame of the expected kind with string fields `names`."""
    if len(raw) > PRE_AUTH_MAX_BYTES:
        raise FrameTooBig(f"pre-authentication frame over {PRE_AUTH_MAX_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise AuthError("pre-authentication frame is not JSON") from None
    if not isinstance(data, dict) or data.get("v") != 1 or data.get("type") != kind:
        raise AuthError(f"expected a {kind!r} frame")
    out = {}
    for name in names:
        value = data.get(name)
        if not isinstance(value, str) or not value or len(value) > 512:
            raise AuthError(f"{kind}.{name}: missing or invalid")
        out[name] = value
    return out
