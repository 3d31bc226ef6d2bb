"""Chat between nodes over Valkey: pub/sub for messages and presence, a capped list
for each room's history, a hash per node for its members.

- A message sent on this node is appended to the room's history list (trimmed
  to history_size) and published on the room's channel in one pipeline (one
  round trip; in a Cluster the list and the channel share the room's hash slot
  and the channel is a sharded one). A node subscribes to a room's channel
  while it has members there, so Valkey hands each message to each node with
  members once; the sender's node skips its own copy.
- The payload carries the W3C trace context of the sender's `chat.broadcast`,
  so the receiving node's `chat.broadcast` joins the sender's trace.
- Presence: a local join or leave is written to this node's presence hash and
  published on the presence channel; the room is subscribed to before a join is
  announced, so a member announced anywhere already receives the room's
  messages. Every heartbeat each node re-reads the hashes of the live nodes:
  what a missed event (or an expired node) changed is announced then.
- The hub's calls never await: everything that talks to Valkey goes through a
  bounded queue to one publisher task (order kept); when the queue is full or
  Valkey is down, messages still reach this node's members and the cross-node
  copy is counted as lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import coredis.exceptions as redis_errors
import trio
from opentelemetry import context as otel_context

from server.chat.presence import Event, RemotePresence
from server.chat.rooms import ChatMessage
from server.engine.base import ChatSink
from server.engine.valkey.client import Client, ValkeyClient
from server.engine.valkey.keys import Keys, presence_field, split_presence_field
from server.errors import EngineDown
from tracing import propagation

log = logging.getLogger(__name__)

QUEUE_SIZE = 4096


@dataclass
class _Outgoing:
    context: otel_context.Context
    message: ChatMessage | None = None
    presence: dict[str, str] | None = None


class ValkeyChat:
    """The valkey engine's chat bus (server/engine/base.py: ChatBus)."""

    def __init__(self, client: ValkeyClient, keys: Keys, *, node_name: str, history_size: int,
                 presence_ttl_ms: int) -> None:
        self.client = client
        client.while_connected(self._subscriber)
        self.keys = keys
        self.node_name = node_name
        self.history_size = history_size
        self.presence_ttl_ms = presence_ttl_ms
        self.sink: ChatSink | None = None
        self.remote = RemotePresence()
        self.local_counts: dict[str, int] = {}  # room -> local members
        self.lost = 0  # messages and presence changes that could not be sent
        self._send, self._receive = trio.open_memory_channel[_Outgoing](QUEUE_SIZE)
        self._subscribed: set[str] = set()  # room channels wanted (rooms with local members)
        # (node, connection id) -> when an event last changed it: a re-read of a presence
        # hash that began before that must not undo it.
        self._changed_at: dict[tuple[str, str], float] = {}
        self._pubsub: Any = None
        self._resubscribe = trio.Event()

    # -- what the hub asks ------------------------------------------------------
    def attach(self, sink: ChatSink) -> None:
        self.sink = sink

    def remote_targets(self, room: str) -> dict[str, int]:
        return self.remote.targets(room)

    def remote_members(self, room: str) -> list[dict[str, str]]:
        return self.remote.members(room)

    def remote_rooms(self) -> dict[str, int]:
        return self.remote.rooms()

    def forward(self, message: ChatMessage, targets: dict[str, int]) -> list[str]:
        # Always queued: the history lives in Valkey even when nobody else listens.
        queued = self._queue(_Outgoing(otel_context.get_current(), message=message))
        return list(targets) if queued else []

    def presence(self, room: str, conn_id: str, user: str, event: str) -> None:
        count = self.local_counts.get(room, 0) + (1 if event == "join" else -1)
        if count > 0:
            self.local_counts[room] = count
        else:
            self.local_counts.pop(room, None)
        self._queue(_Outgoing(otel_context.get_current(), presence={
            "node": self.node_name, "room": room, "conn": conn_id, "user": user, "event": event}))

    async def fetch_history(self, room: str) -> list[ChatMessage]:
        try:
            raw = await self.client.call("LRANGE", lambda c: c.lrange(self.keys.history(room), 0, -1))
        except EngineDown as exc:
            log.info("chat: no history for %r: %s", room, exc)
            return []
        messages = (ChatMessage.from_json(_loads(item)) for item in raw)
        return [m for m in messages if m is not None]

    def _queue(self, item: _Outgoing) -> bool:
        try:
            self._send.send_nowait(item)
            return True
        except trio.WouldBlock:
            self.lost += 1
            return False

    # -- the tasks -----------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._publisher)
            task_status.started()

    async def _publisher(self) -> None:
        async with self._receive:
            async for item in self._receive:
                token = otel_context.attach(item.context)
                try:
                    if item.message is not None:
                        await self._publish_message(item.message)
                    elif item.presence is not None:
                        await self._publish_presence(item.presence)
                except (EngineDown, redis_errors.RedisError) as exc:
                    self.lost += 1
                    log.debug("chat: not sent to other nodes: %s", exc)
                finally:
                    otel_context.detach(token)

    async def _publish_message(self, message: ChatMessage) -> None:
        body = _dumps({"message": message.to_json(), "trace": propagation.inject()})
        history, channel = self.keys.history(message.room), self.keys.room_channel(message.room)

        async def send(c: Client) -> None:
            async with c.pipeline(transaction=False) as pipe:
                pipe.rpush(history, [_dumps(message.to_json())])
                pipe.ltrim(history, -self.history_size, -1)
                self._publish(pipe, channel, body)

        await self.client.call("PIPELINE", send, batch_size=3)

    async def _publish_presence(self, presence: dict[str, str]) -> None:
        room, event = presence["room"], presence["event"]
        if event == "join":  # receive the room's messages before anyone hears of the member
            await self._subscribe(room)
        hash_key = self.keys.presence(self.node_name)
        field = presence_field(room, presence["conn"])
        body = _dumps({**presence, "trace": propagation.inject()})

        async def send(c: Client) -> None:
            async with c.pipeline(transaction=False) as pipe:
                if event == "join":
                    pipe.hset(hash_key, {field: presence["user"]})
                    pipe.pexpire(hash_key, self.presence_ttl_ms)
                else:
                    pipe.hdel(hash_key, [field])
                self._publish(pipe, self.keys.presence_channel, body)

        await self.client.call("PIPELINE", send, batch_size=3 if event == "join" else 2)
        if event == "leave" and room not in self.local_counts:
            await self._unsubscribe(room)

    def _publish(self, pipe: Any, channel: str, body: str) -> None:
        if self.client.cluster:
            pipe.spublish(channel, body)
        else:
            pipe.publish(channel, body)

    # -- subscriptions ---------------------------------------------------------------
    async def _subscribe(self, room: str) -> None:
        # Wanted from now on, even if this call fails: a subscription that (re)opens
        # takes every wanted channel.
        channel = self.keys.room_channel(room)
        already = channel in self._subscribed
        self._subscribed.add(channel)
        if not already and self._pubsub is not None:
            await self.client.call("SUBSCRIBE", lambda c: self._pubsub.subscribe(channel))

    async def _unsubscribe(self, room: str) -> None:
        channel = self.keys.room_channel(room)
        self._subscribed.discard(channel)
        if self._pubsub is not None:
            await self.client.call("UNSUBSCRIBE", lambda c: self._pubsub.unsubscribe(channel))

    async def _subscriber(self, client: Client) -> None:
        """Consume the presence channel and the rooms' channels (coredis resubscribes
        after a reconnect); reopen the subscription if it fails all the same."""
        while True:
            try:
                channels = [self.keys.presence_channel, *self._subscribed]
                opened = (client.sharded_pubsub(channels=channels, ignore_subscribe_messages=True)  # type: ignore[union-attr]
                          if self.client.cluster else
                          client.pubsub(channels=channels, ignore_subscribe_messages=True))
                async with opened as pubsub:
                    self._pubsub = pubsub
                    async for raw in pubsub:
                        if raw.get("type") in ("message", "smessage"):
                            self._on_pubsub(str(raw["channel"]), str(raw["data"]))
            except* (redis_errors.RedisError, OSError, anyio.ClosedResourceError,
                     anyio.BrokenResourceError) as group:
                self.client.unhealthy(group.exceptions[0])
            finally:
                self._pubsub = None
            await trio.sleep(1.0)

    def _on_pubsub(self, channel: str, data: str) -> None:
        payload = _loads(data)
        if not isinstance(payload, dict):
            log.warning("chat: ignored a malformed payload on %s", channel)
            return
        carrier = payload.get("trace")
        token = otel_context.attach(propagation.extract(carrier if isinstance(carrier, dict) else {}))
        try:
            if channel == self.keys.presence_channel:
                self._on_presence(payload)
            else:
                message = ChatMessage.from_json(payload.get("message"))
                if message is None:
                    log.warning("chat: ignored a malformed message on %s", channel)
                elif message.node != self.node_name and self.sink is not None:
                    self.sink.deliver_remote(message)
        finally:
            otel_context.detach(token)

    def _on_presence(self, p: dict[str, Any]) -> None:
        fields = [p.get(k) for k in ("node", "room", "conn", "user", "event")]
        if not all(isinstance(v, str) for v in fields) or fields[4] not in ("join", "leave"):
            log.warning("chat: ignored a malformed presence event")
            return
        node, room, conn, user, event = (str(v) for v in fields)
        if node != self.node_name:
            self._changed_at[(node, conn)] = trio.current_time()
            self._announce([self.remote.apply(node, room, conn, user, event)])

    def _announce(self, events: Sequence[Event | None]) -> None:
        for event in events:
            if event is not None and self.sink is not None:
                self.sink.remote_presence(*event)

    # -- the heartbeat's share ---------------------------------------------------------
    async def restore_presence(self) -> None:
        """The hash is gone (Valkey restarted without AOF, or this node was away past
        its TTL): write every local member again."""
        if self.sink is None:
            return
        snapshot = {presence_field(room, conn): user
                    for room, members in self.sink.local_rooms_snapshot().items()
                    for conn, user in members.items()}
        if not snapshot:
            return
        key = self.keys.presence(self.node_name)

        async def write(c: Client) -> None:
            async with c.pipeline(transaction=False) as pipe:
                pipe.hset(key, snapshot)
                pipe.pexpire(key, self.presence_ttl_ms)

        await self.client.call("PIPELINE", write, batch_size=2, traced=False)

    def replace_presence(self, node: str, fields: dict[str, str], read_at: float) -> None:
        """A node's whole presence hash as read at read_at: announce what changed since,
        except for members an event changed after read_at (the event is newer)."""
        self._changed_at = {k: t for k, t in self._changed_at.items() if t >= read_at - 60}
        newer = {conn for (n, conn), t in self._changed_at.items() if n == node and t >= read_at}
        fresh: dict[str, dict[str, str]] = {}
        for field, user in fields.items():
            parsed = split_presence_field(field)
            if parsed is not None:
                fresh.setdefault(parsed[0], {})[parsed[1]] = user
        self._announce(self.remote.replace(node, fresh, keep=newer))

    def forget_node(self, node: str) -> None:
        """A node is down: its members leave."""
        self._announce(self.remote.forget(node))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _loads(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
