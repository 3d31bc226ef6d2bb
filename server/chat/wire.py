"""A chat frame as text and as the bytes of an RFC 6455 text frame, made once per
broadcast and written as they are to every member whose socket takes them at once.

A server's frames are not masked (RFC 6455 5.1), so one message's bytes are the same
for every connection without an extension; connections that negotiated one (e.g.
permessage-deflate) are never written these bytes (server/http/direct_send.py).
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81  # FIN + opcode 1 (text)


def text_frame(text: str) -> bytes:
    """The wire bytes of one unfragmented, unmasked text frame carrying `text`."""
    payload = text.encode("utf-8")
    n = len(payload)
    if n < 126:
        header = bytes((_FIN_TEXT, n))
    elif n < 0x10000:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


class OutFrame:
    """A frame for many members: its text (for queues) and, made on first use, its wire bytes."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        if self._wire is None:
            self._wire = text_frame(self.text)
        return self._wire
