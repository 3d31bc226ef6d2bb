"""Writing a chat frame to a WebSocket's socket at once, from the broadcaster, under
Hypercorn-trio: no writer task woken, no wsproto, no await, for a member whose socket
takes the whole frame now (the common case: a client that keeps up).

Why: a frame through the ASGI `send` goes WSStream -> wsproto -> H11Protocol ->
TCPServer.protocol_send (a lock, a shielded scope) -> SocketStream.send_all, and the
writer task must be scheduled first: ~15 Python calls and two task switches per member
per message, against one `write()` for the bytes every member gets alike
(server/chat/wire.py). The profiles are in bench/RESULTS.md.

How it stays correct:
- Only HTTP/1.1 over plain TCP: anything else gets None from `attach` and keeps the writer
  path. With permessage-deflate negotiated, data frames differ per connection, so such a
  socket (`frames` False) takes control frames only: the node's pings (RFC 7692 compresses
  data frames, never control frames).
- Order: the connection writes directly only when nothing of it is queued or in its
  writer's hands (server/chat/connection.py counts that) and the connection's send lock
  is free, so a direct frame never overtakes another and never lands inside one.
- A frame the socket takes only in part: its rest is `pending` and the send lock stays
  held (by the connection, not by a task: `HandoffLock` replaces Hypercorn's trio.Lock,
  which only its owner task may release) until the writer task has written the rest;
  Hypercorn's own frames (pongs, close) wait for it. If the rest cannot go out (the peer
  stopped reading past the deadline, or the connection ends), the socket is closed:
  after half a frame nothing else may follow.
- The socket's state is checked on every write (closed WebSocket, closed fd), since the
  broadcaster may run after the connection ended.

This reaches into Hypercorn 0.18's objects (WSStream.send -> H11Protocol.send ->
TCPServer.send_lock/.stream): tests/test_direct_send.py checks that chain against the
pinned version, and `attach` returns None (the writer path, as before) if it changes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import trio
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.protocol.ws_stream import ASGIWebsocketState, WSStream
from hypercorn.trio.tcp_server import TCPServer
from wsproto.connection import ConnectionState
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake

log = logging.getLogger(__name__)


class HandoffLock:
    """Hypercorn's per-connection send lock as it uses it (`async with`), FIFO and handed
    straight to the next waiter as trio.Lock is, but with no owner task: `hold_nowait`
    takes it in one task and `release` may come from another."""

    __slots__ = ("_held", "_lot")

    def __init__(self) -> None:
        self._held = False
        self._lot: trio.lowlevel.ParkingLot | None = None  # made by the first waiter (rare)

    def locked(self) -> bool:
        return self._held

    def hold_nowait(self) -> bool:
        if self._held:
            return False
        self._held = True
        return True

    def release(self) -> None:
        if not self._held:
            raise RuntimeError("HandoffLock released while not held")
        if self._lot:
            self._lot.unpark()  # the first waiter now holds it
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            if self._lot is None:
                self._lot = trio.lowlevel.ParkingLot()
            await self._lot.park()  # woken by release(), holding it
        else:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


def _deflate_accepted(ws: WSStream) -> bool:
    """Whether Hypercorn accepted an extension: it offers only permessage-deflate and
    accepts it when the client asks (the same pure function, asked the same question)."""
    offers = ws.handshake.extensions
    return offers is not None and server_extensions_handshake(offers, [PerMessageDeflate()]) is not None


class DirectSocket:
    """One WebSocket connection's socket, written by the broadcaster (frames) and the node's
    pinger (pings) when it is free."""

    __slots__ = ("_lock", "_sock", "_stream", "_ws", "frames", "partial_writes", "pending")

    def __init__(self, ws: WSStream, stream: trio.SocketStream, lock: HandoffLock, *,
                 frames: bool = True) -> None:
        self.frames = frames  # False: control frames only (an extension transforms data frames)
        self._ws = ws
        self._stream = stream
        self._sock = stream.socket
        self._lock = lock
        self.pending = b""  # the rest of a frame written in part (the lock is held meanwhile)
        self.partial_writes = 0  # how often that happened (tests, diagnostics)

    @classmethod
    def attach(cls, send: Any) -> DirectSocket | None:
        """For the ASGI `send` of an accepted WebSocket: its socket, or None where direct
        writes do not apply (another server, HTTP/2, TLS, a send in flight)."""
        ws = getattr(send, "__self__", None)
        if not isinstance(ws, WSStream) or ws.state is not ASGIWebsocketState.CONNECTED:
            return None
        h11 = getattr(ws.send, "__self__", None)
        server = getattr(getattr(h11, "send", None), "__self__", None)
        if not isinstance(h11, H11Protocol) or not isinstance(server, TCPServer):
            return None
        stream: Any = server.stream  # typed SSLStream by Hypercorn; a SocketStream without TLS
        if type(stream) is not trio.SocketStream:
            return None
        current = server.send_lock
        if isinstance(current, HandoffLock):
            lock = current
        elif isinstance(current, trio.Lock) and not current.locked() \
                and not current.statistics().tasks_waiting:
            lock = HandoffLock()
            server.send_lock = lock  # type: ignore[assignment]  # used only as `async with`
        else:
            return None
        return cls(ws, stream, lock, frames=not _deflate_accepted(ws))

    def write_now(self, data: bytes) -> bool:
        """Write `data` (whole frames) if the socket is free and takes at least part of it
        now; True when it is on its way (a rest left in `pending` for `flush`)."""
        ws = self._ws
        if (self._lock.locked() or ws.closed or ws.state is not ASGIWebsocketState.CONNECTED
                or ws.connection.state is not ConnectionState.OPEN):
            return False
        fd = self._sock.fileno()
        if fd < 0:
            return False
        try:
            written = os.write(fd, data)
        except OSError:  # full (EAGAIN) or gone: the writer's path deals with it
            return False
        if written < len(data):
            self._lock.hold_nowait()
            self.pending = data[written:]
            self.partial_writes += 1
        return True

    async def flush(self, seconds: float) -> bool:
        """Write the rest of a partly written frame, then free the socket for others.
        False (and the socket closed) if it could not be written within `seconds`."""
        if not self.pending:
            return True
        rest, self.pending = self.pending, b""
        done = False
        try:
            with trio.move_on_after(seconds):
                await self._stream.send_all(rest)
                done = True
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if not done:
                self._sock.close()  # half a frame is out: nothing may follow it
            self._lock.release()
        return done

    def abandon(self) -> None:
        """The connection is ending: a rest never written closes the socket and frees the
        lock, so Hypercorn's own closing frames do not wait on it."""
        if self.pending:
            self.pending = b""
            self._sock.close()
            self._lock.release()
