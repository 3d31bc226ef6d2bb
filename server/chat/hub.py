"""The chat hub: rooms, the node's connections, and the one broadcaster task.

Producers (connection readers) hand the broadcaster a message together with the
OpenTelemetry context current when they produced it; the broadcaster re-attaches
that context, so `chat.broadcast` is a child of the sender's `websocket.message`
span although it runs in another task. Fan-out never awaits a client: each
frame is encoded once per protocol (text and wire bytes) and offered to every
member: written at once where the member's socket is free, else to its bounded queue.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio
from opentelemetry import context as otel_context
from opentelemetry import trace

from server.chat.connection import WRITTEN, Connection, Protocol
from server.chat.rooms import ChatMessage, Room, Rooms
from server.chat.wire import OutFrame
from server.errors import InvalidInput, NotFound, Unavailable
from tracing.chat import broadcast_span
from tracing.ids import current_trace_id

if TYPE_CHECKING:
    from server.engine.base import ChatBus
    from tracing.metrics import Metrics

log = logging.getLogger(__name__)

_OUT = {"direction": "out"}  # websocket.messages: frames written to clients


def utc_timestamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclass
class _Broadcast:
    room: str
    exclude: Connection | None
    context: otel_context.Context
    message: ChatMessage | None = None
    presence: dict[str, Any] | None = None
    remote: bool = False  # forwarded by another node: deliver here only


@dataclass
class HubStats:
    broadcasts: int = 0
    delivered: int = 0
    dropped: int = 0
    presence_lost: int = 0
    evicted: int = 0
    remote_lost: int = 0  # forwarded messages dropped because the broadcaster was full


class Hub:
    def __init__(self, *, node_name: str, tracer: trace.Tracer, history_size: int,
                 max_rooms: int, max_rooms_per_connection: int, queue_size: int,
                 publish_timeout: float, metrics: Metrics | None = None,
                 bus: ChatBus | None = None, ping_interval: float = 0.0) -> None:
        self.node_name = node_name
        self.tracer = tracer
        self.rooms = Rooms(history_size=history_size, max_rooms=max_rooms, node_name=node_name)
        self.max_rooms_per_connection = max_rooms_per_connection
        self.publish_timeout = publish_timeout
        self.ping_interval = ping_interval
        self.connections: dict[str, Connection] = {}
        self.stats = HubStats()
        self.metrics = metrics
        self._send, self._receive = trio.open_memory_channel[_Broadcast](queue_size)
        # Other nodes, through the engine's chat bus (None: a single node).
        self.bus = bus
        if bus is not None:
            bus.attach(self)

    # -- connections ---------------------------------------------------------
    def add(self, conn: Connection) -> None:
        self.connections[conn.id] = conn
        conn.ping_due = trio.current_time() + self.ping_interval

    async def run_pinger(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ping every connection each `ping_interval` seconds (0: never), from this one task
        rather than one task per connection (Hypercorn's way: ~3.5 KiB per idle WebSocket).
        With `tcp_user_timeout` a vanished peer is found even on an idle connection, and
        proxies see traffic. Connections fall due one by one (from when they joined), so
        pings spread over the interval instead of coming all at once."""
        task_status.started()
        if self.ping_interval <= 0:
            return
        tick = min(1.0, self.ping_interval)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for conn in list(self.connections.values()):
                if conn.ping_due <= now:
                    conn.ping_due = now + self.ping_interval
                    conn.ping()

    def remove(self, conn: Connection) -> None:
        """Forget a connection that has gone; never blocks (runs in finally blocks)."""
        self.connections.pop(conn.id, None)
        for name in list(conn.rooms):
            if self.rooms.leave(name, conn) is not None:
                self._presence_nowait(name, conn, "leave")

    def close_all(self, code: int, reason: str) -> None:
        for conn in list(self.connections.values()):
            conn.request_close(code, reason)

    # -- rooms ---------------------------------------------------------------
    def join(self, conn: Connection, name: str) -> Room:
        if name not in conn.rooms and len(conn.rooms) >= self.max_rooms_per_connection:
            raise InvalidInput(f"a connection may be in at most {self.max_rooms_per_connection} rooms",
                               field="room")
        already = name in conn.rooms
        room = self.rooms.join(name, conn)
        if not already:
            self._presence_nowait(name, conn, "join")
        return room

    def leave(self, conn: Connection, name: str) -> None:
        if self.rooms.leave(name, conn) is None:
            raise NotFound(f"not a member of room {name!r}", field="room")
        self._presence_nowait(name, conn, "leave")

    def _presence_nowait(self, room: str, conn: Connection, event: str) -> None:
        if self.bus is not None:
            self.bus.presence(room, conn.id, conn.username, event)
        self._queue_presence(room, conn, conn.username, self.node_name, event)

    def remote_presence(self, room: str, user: str, node: str, event: str) -> None:
        """A member on another node joined or left: tell the local members."""
        self._queue_presence(room, None, user, node, event)

    def _queue_presence(self, room: str, exclude: Connection | None, user: str, node: str,
                        event: str) -> None:
        item = _Broadcast(room, exclude, otel_context.get_current(),
                          presence={"type": "presence", "room": room, "event": event,
                                    "user": user, "node": node})
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.stats.presence_lost += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- the cluster's view -------------------------------------------------
    def members(self, name: str) -> list[dict[str, str]]:
        """Every member of a room on every reachable node, local ones first."""
        room = self.rooms.get(name)
        local = self.rooms.members_json(room) if room is not None else []
        return local + self.bus.remote_members(name) if self.bus is not None else local

    def room_counts(self) -> dict[str, int]:
        """Member count per room, cluster-wide (rooms with local history included)."""
        counts = {r.name: len(r.members) for r in self.rooms.all()}
        if self.bus is not None:
            for name, n in self.bus.remote_rooms().items():
                counts[name] = counts.get(name, 0) + n
        return counts

    def local_rooms_snapshot(self) -> dict[str, dict[str, str]]:
        return {r.name: {c.id: c.username for c in r.members.values()}
                for r in self.rooms.all() if r.members}

    async def sync_history(self, name: str) -> None:
        """Before a first local member joins: fetch the room's history from the engine."""
        if self.bus is None:
            return
        room = self.rooms.get(name)
        if room is not None and room.members:
            return  # members here: every message reached this node
        fetched = await self.bus.fetch_history(name)
        if not fetched:
            return
        room = self.rooms.ensure(name)
        # The peer's order is the room's order (timestamps tie within a millisecond);
        # anything newer held here only follows it.
        known = {m.id for m in fetched}
        newer = [m for m in room.history if m.id not in known and m.timestamp >= fetched[-1].timestamp]
        room.history.clear()
        room.history.extend([*fetched, *newer])

    def deliver_remote(self, message: ChatMessage) -> None:
        """A message forwarded by its sender's node: fan out here, in arrival order."""
        try:
            self._send.send_nowait(_Broadcast(message.room, None, otel_context.get_current(),
                                              message=message, remote=True))
        except trio.WouldBlock:
            self.stats.remote_lost += 1
            log.warning("broadcaster full: dropped a message forwarded from %s", message.node)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    # -- chat ----------------------------------------------------------------
    async def publish(self, conn: Connection, room: str, text: str) -> ChatMessage:
        """Queue a chat message for fan-out; waits (bounded) if the broadcaster is behind."""
        if room not in conn.rooms:
            raise NotFound(f"not a member of room {room!r}; join it first", field="room")
        message = ChatMessage(
            room=room, user=conn.username, text=text, timestamp=utc_timestamp(),
            id=os.urandom(8).hex(), node=self.node_name, trace_id=current_trace_id())
        item = _Broadcast(room, conn, otel_context.get_current(), message=message)
        with trio.move_on_after(self.publish_timeout):
            await self._send.send(item)
            return message
        raise Unavailable("the node is overloaded: the broadcaster is behind; try again")

    # -- the broadcaster task ------------------------------------------------
    async def run_broadcaster(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                              ) -> None:
        task_status.started()
        async with self._receive:
            async for item in self._receive:
                token = otel_context.attach(item.context)
                try:
                    if item.message is not None:
                        self._fan_out(item.message, item.exclude, item.remote)
                    elif item.presence is not None:
                        self._fan_out_presence(item.room, item.presence, item.exclude)
                finally:
                    otel_context.detach(token)

    def _fan_out(self, msg: ChatMessage, exclude: Connection | None, remote: bool = False) -> None:
        # Other nodes with members get the message once each; a forwarded one stops here.
        bus = None if remote else self.bus
        targets = bus.remote_targets(msg.room) if bus is not None else {}
        with broadcast_span(self.tracer, self.metrics, room=msg.room, sender=msg.user,
                            origin_node=msg.node if remote else None, remote_targets=targets) as record:
            room = self.rooms.get(msg.room)
            if room is not None:
                room.history.append(msg)
                # One frame per protocol, made on first use (locals: this loop is the hot path).
                plain: OutFrame | None = None
                json_frame: OutFrame | None = None
                written = queued = 0
                for conn in list(room.members.values()):
                    if conn is exclude:
                        continue
                    if conn.protocol is Protocol.TEXT:
                        if plain is None:
                            plain = OutFrame(self.encode_message(msg, Protocol.TEXT))
                        frame = plain
                    else:
                        if json_frame is None:
                            json_frame = OutFrame(self.encode_message(msg, Protocol.JSON))
                        frame = json_frame
                    offered = conn.offer(frame)
                    if offered == WRITTEN:
                        written += 1
                    elif offered:
                        queued += 1
                    else:
                        record.dropped += 1
                        self._maybe_evict(conn)
                record.delivered += written + queued
                self._count_written(written)
            self.stats.broadcasts += 1
            self.stats.delivered += record.delivered
            self.stats.dropped += record.dropped
            if bus is not None:
                record.forwarded = bus.forward(msg, targets)

    def _fan_out_presence(self, room_name: str, presence: dict[str, Any],
                          exclude: Connection | None) -> None:
        room = self.rooms.get(room_name)
        if room is None:
            return
        frame = OutFrame(encode(presence))
        written = 0
        for conn in list(room.members.values()):
            if conn is not exclude and conn.protocol is Protocol.JSON:
                offered = conn.offer(frame)
                if not offered:
                    self._maybe_evict(conn)
                written += offered == WRITTEN
        self._count_written(written)

    def _count_written(self, frames: int) -> None:
        """Frames written directly count as sent here (the writer counts what it sends)."""
        if frames and self.metrics is not None:
            self.metrics.ws_messages.add(frames, _OUT)

    def _maybe_evict(self, conn: Connection) -> None:
        """A connection the slow-consumer policy closed stops receiving at once."""
        if conn.close_request is not None and conn.rooms:
            self.stats.evicted += 1
            self.remove(conn)

    @staticmethod
    def encode_message(msg: ChatMessage, protocol: Protocol) -> str:
        if protocol is Protocol.TEXT:
            return encode(msg.to_plain())
        return encode({"type": "message", **msg.to_json()})

    def history(self, room: str) -> list[ChatMessage]:
        r = self.rooms.get(room)
        return list(r.history) if r is not None else []
