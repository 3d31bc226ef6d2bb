"""One WebSocket client as the chat hub sees it: who it is, which rooms it is in,
and its bounded outbound queue with the slow-consumer policy.

Only the connection's own writer task awaits the socket. Everyone else hands
it frames with `offer` (never blocks) or `send_reply` (bounded wait), so one
stalled client cannot slow anybody else down. A broadcast frame may skip the
queue and be written at once (`direct`, server/http/direct_send.py) when nothing
of this connection is queued or being written: the order stays the order offered.

The queue is a deque made on first use and dropped once drained, not a trio memory
channel, and `on_queued` starts the writer only when there is something to write:
an idle connection holds no queue and no writer task (issue 13: memory per idle
WebSocket).
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol as Interface

import trio

from server.chat.wire import OutFrame

log = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

_ids = itertools.count(1)


class Protocol(Enum):
    TEXT = "text"  # the original's plain-text protocol
    JSON = "webserver.v1"


class Wake:
    """Queued to wake the writer when a close is requested."""


WAKE = Wake()
Outgoing = str | Wake

# What offer() did with a frame (falsy: not delivered).
DROPPED, QUEUED, WRITTEN = 0, 1, 2

PING_FRAME = b"\x89\x00"  # FIN + ping, no payload, unmasked (a server's)


class DirectWriter(Interface):
    """A socket the broadcaster and the pinger may write whole frames to without waiting."""

    pending: bytes  # the rest of a frame written in part, for the writer task to finish

    def write_now(self, data: bytes) -> bool: ...


@dataclass(eq=False, slots=True)
class Connection:
    username: str
    protocol: Protocol
    queue_size: int
    slow_timeout: float
    peer: str = ""
    id: str = field(default_factory=lambda: f"c{next(_ids)}")
    rooms: set[str] = field(default_factory=set)
    dropped: int = 0
    stuck_since: float | None = None
    close_request: tuple[int, str] | None = None
    direct: DirectWriter | None = None  # for broadcast frames
    control: DirectWriter | None = None  # for the node's pings (also with permessage-deflate)
    ping_due: float = 0.0  # trio time of the next ping (Hub.run_pinger)
    # Frames queued or in the writer's hands, not yet written: direct writes wait for 0.
    backlog: int = 0

    # Extra room for the history a plain client is sent on connect, queued
    # before any live message so the two never interleave or repeat.
    history_reserve: int = 0
    # Called when something is queued: the session starts its writer if none runs.
    on_queued: Callable[[], None] | None = field(default=None, repr=False)
    _queue: deque[Outgoing] | None = field(default=None, init=False, repr=False)  # None while empty
    _closed: bool = field(default=False, init=False, repr=False)
    # Replies waiting for room (send_reply), made on first use.
    _room: trio.lowlevel.ParkingLot | None = field(default=None, init=False, repr=False)

    @property
    def capacity(self) -> int:
        return self.queue_size + self.history_reserve

    @property
    def queued(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def offer(self, frame: str | OutFrame) -> int:
        """Write a frame at once (an OutFrame, when the socket is free and nothing of this
        connection waits) or queue it without waiting; on a full queue drop it and maybe
        evict. Returns WRITTEN, QUEUED or DROPPED (0). Called by the broadcaster.
        """
        if self.close_request is not None:
            return DROPPED
        if isinstance(frame, OutFrame):
            if self._write_now(self.direct, frame.wire):
                return WRITTEN
            frame = frame.text
        try:
            self.queue_nowait(frame)
            return QUEUED
        except trio.WouldBlock:
            self.dropped += 1
            now = trio.current_time()
            if self.stuck_since is None:
                self.stuck_since = now
            elif now - self.stuck_since >= self.slow_timeout:
                self.request_close(CLOSE_POLICY_VIOLATION,
                                   f"slow consumer: {self.dropped} messages dropped")
            return DROPPED
        except trio.ClosedResourceError:
            return DROPPED

    def ping(self) -> bool:
        """Write a ping if the socket is free and nothing of this connection waits; a
        connection that is busy writing needs none (its traffic shows a vanished peer)."""
        return self.close_request is None and self._write_now(self.control, PING_FRAME)

    def _write_now(self, sock: DirectWriter | None, data: bytes) -> bool:
        """`data` written to `sock` at once, if nothing of this connection is queued or in
        its writer's hands (so nothing is overtaken) and the socket takes some of it now."""
        if sock is None or self.backlog or not sock.write_now(data):
            return False
        if sock.pending:  # written in part: the writer finishes it (the queue is empty)
            try:
                self.queue_nowait(WAKE)
            except trio.ClosedResourceError:
                pass  # the connection has ended: its socket is closed with the rest
        return True

    def queue_nowait(self, item: Outgoing) -> None:
        """Queue for the writer (trio.WouldBlock when full, ClosedResourceError once closed)."""
        if self._closed:
            raise trio.ClosedResourceError
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        elif len(queue) >= self.capacity:
            raise trio.WouldBlock
        queue.append(item)
        self.backlog += 1
        if self.on_queued is not None:
            self.on_queued()

    def take_nowait(self) -> Outgoing:
        """The oldest queued item, for the writer (trio.WouldBlock when empty)."""
        queue = self._queue
        if not queue:
            raise trio.WouldBlock
        item = queue.popleft()
        if not queue:
            self._queue = None  # an idle connection keeps no deque (~600 bytes)
        if self._room:
            self._room.unpark()
        return item

    def close_queue(self) -> None:
        """No more frames (the connection ended): queueing raises, waiting replies give up."""
        self._closed = True
        self._queue = None
        if self._room:
            self._room.unpark_all()

    async def send_reply(self, frame: str) -> bool:
        """Queue a reply to this client's own request, waiting (bounded) for room.

        Replies are not dropped: the client's reader waits instead, which is
        backpressure on that client alone. Past the slow-consumer limit it is closed.
        """
        if self.close_request is not None:
            return False
        await trio.lowlevel.checkpoint()
        with trio.move_on_after(self.slow_timeout):
            while self.queued >= self.capacity and not self._closed:
                if self._room is None:
                    self._room = trio.lowlevel.ParkingLot()
                await self._room.park()  # take_nowait makes room
            try:
                self.queue_nowait(frame)
                return True
            except trio.ClosedResourceError:
                return False
        self.request_close(CLOSE_POLICY_VIOLATION, "slow consumer: replies not read")
        return False

    def request_close(self, code: int, reason: str) -> None:
        """Ask the writer to close with code; it does once any send in flight ends."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason)
        if code == CLOSE_POLICY_VIOLATION:
            log.warning("closing connection %s (%s): %s", self.id, self.username, reason)
        try:
            self.queue_nowait(WAKE)
        except (trio.WouldBlock, trio.ClosedResourceError):
            pass  # full: the writer checks close_request after its current send

    def mark_drained(self) -> None:
        self.stuck_since = None
