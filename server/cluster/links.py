"""One authenticated WebSocket link to a peer: a bounded outbox drained by a
writer task, a reader that dispatches messages, and request/reply with deadlines.

Handlers run inline in the reader (they must not await), so messages from one
peer are handled in the order that peer sent them: chat forwarded from a node
reaches local members in the sender's order.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from server.cluster.protocol import REPLY, Message, ProtocolError, decode

log = logging.getLogger(__name__)

CLOSE_AUTH_FAILED = 4001
CLOSE_DUPLICATE = 4002
CLOSE_PROTOCOL_ERROR = 4003
CLOSE_OVERLOADED = 4004
CLOSE_SILENT = 4005
CLOSE_GOING_AWAY = 1001

# handler(peer name, message) -> reply body for requests (None: no reply)
Handler = Callable[[str, Message], dict[str, Any] | None]


class LinkError(Exception):
    """The peer could not be asked: no link, the link broke, or no answer in time."""


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    reply: Message | None = None


class PeerLink:
    def __init__(self, ws: WebSocketConnection, *, peer: str, dialer: str, queue_size: int,
                 dispatch: Callable[[PeerLink, Message], None],
                 on_send: Callable[[Message], None] | None = None) -> None:
        self.ws = ws
        self.peer = peer
        self.dialer = dialer  # who dialed: decides which of two duplicate links survives
        self._dispatch = dispatch
        self._on_send = on_send
        self._send, self._receive = trio.open_memory_channel[str](queue_size)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._close: tuple[int, str] | None = None
        self.closed = trio.Event()

    def send_nowait(self, message: Message) -> bool:
        """Queue a message; a link whose outbox is full is closed (it cannot keep up)."""
        if self.closed.is_set():
            return False
        try:
            self._send.send_nowait(message.encode())
            if self._on_send is not None:
                self._on_send(message)
            return True
        except trio.WouldBlock:
            self.close(CLOSE_OVERLOADED, "peer link outbox full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        return False

    async def request(self, message: Message, within_s: float) -> Message:
        """Send a request and wait for its reply; LinkError on a broken link or timeout."""
        message.id = next(self._ids)
        pending = self._pending[message.id] = _Pending()
        try:
            if not self.send_nowait(message):
                raise LinkError(f"link to {self.peer} is closed")
            with trio.move_on_after(within_s):
                await pending.done.wait()
            if pending.reply is None:
                raise LinkError(f"{self.peer} did not answer {message.type} within {within_s:g}s"
                                if not self.closed.is_set() else f"link to {self.peer} closed")
            if pending.reply.error is not None:
                raise LinkError(f"{self.peer} refused {message.type}: {pending.reply.error}")
            return pending.reply
        finally:
            self._pending.pop(message.id, None)

    def close_info(self) -> tuple[int, str, str]:
        """(code, reason, who closed: "self" or "peer") once the link has ended."""
        if self._close is not None:
            return self._close[0], self._close[1], "self"
        closed = self.ws.closed
        if closed is not None:
            return closed.code, closed.reason or "", "peer"
        return CLOSE_GOING_AWAY, "link closed", "self"

    def close(self, code: int, reason: str) -> None:
        """Ask the link to close; run() returns soon after."""
        if self._close is None:
            self._close = (code, reason)
            self._send.close()

    async def run(self) -> None:
        """Serve the link until either side closes it; always leaves it closed."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, nursery.cancel_scope)
                await self._reader()
                nursery.cancel_scope.cancel()
        finally:
            self.closed.set()
            for pending in self._pending.values():
                pending.done.set()
            code, reason = self._close or (CLOSE_GOING_AWAY, "link closed")
            with trio.move_on_after(1) as cleanup:
                cleanup.shield = True
                await self.ws.aclose(code, reason)

    async def _writer(self, scope: trio.CancelScope) -> None:
        try:
            async with self._receive:
                async for frame in self._receive:
                    await self.ws.send_message(frame)
        except ConnectionClosed:
            pass
        scope.cancel()  # outbox closed (close()) or the socket broke: end the link

    async def _reader(self) -> None:
        while True:
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed:
                return
            try:
                message = decode(frame)
            except ProtocolError as exc:
                log.warning("closing link to %s: %s", self.peer, exc)
                self.close(CLOSE_PROTOCOL_ERROR, str(exc)[:120])
                return
            if message.type == REPLY:
                pending = self._pending.get(message.re or -1)
                if pending is not None:
                    pending.reply = message
                    pending.done.set()
                continue
            self._dispatch(self, message)

    def reply(self, request: Message, body: dict[str, Any] | None = None, *,
              error: str | None = None) -> None:
        if request.id is not None:
            self.send_nowait(Message(REPLY, body or {}, re=request.id, error=error))


def backoff_delays(first: float, cap: float) -> Any:
    """first, 2*first, ... capped: the reconnect schedule (jitter is added by the caller)."""
    for attempt in itertools.count():
        yield min(cap, first * math.pow(2, attempt))
