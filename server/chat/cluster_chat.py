"""Chat across the cluster: who is in each room on other nodes, forwarding, and history.

Phoenix.PubSub's pattern: the sender's node delivers to its own members through
its broadcaster and forwards each message once to every other node that has
members in the room; that node's broadcaster delivers to its members and never
forwards again, so each member gets it exactly once. A link delivers frames in
order and a node has one broadcaster, so members see a sender's messages in the
sender's order.

Presence: each node tells every peer when a local member joins or leaves, and
sends a full snapshot of its rooms when a link to a peer comes up. A node that
goes down takes its members with it: they leave presence once it is marked down
(failure_timeout). A node joining a room it has no members in asks a peer that
has for the room's recent history, so a client joining anywhere gets the last
messages.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from server.chat.presence import Event, RemotePresence
from server.chat.rooms import ChatMessage
from server.cluster.links import LinkError
from server.cluster.protocol import Message

if TYPE_CHECKING:
    from server.cluster.mesh import Mesh
    from server.engine.base import ChatSink

log = logging.getLogger(__name__)

CHAT_MESSAGE = "chat.message"
CHAT_PRESENCE = "chat.presence"
CHAT_MEMBERS = "chat.members"  # snapshot of a node's local rooms
CHAT_HISTORY = "chat.history"


class ClusterChat:
    """The mesh engine's chat bus (server/engine/base.py: ChatBus)."""

    def __init__(self, mesh: Mesh, *, history_timeout: float) -> None:
        self.hub: ChatSink = _NoSink()
        self.mesh = mesh
        self.history_timeout = history_timeout
        self.remote = RemotePresence()
        mesh.on(CHAT_MESSAGE, self._on_message)
        mesh.on(CHAT_PRESENCE, self._on_presence)
        mesh.on(CHAT_MEMBERS, self._on_members)
        mesh.on(CHAT_HISTORY, self._on_history)
        mesh.subscribe(self._on_membership)

    # -- what the hub asks ------------------------------------------------------
    def attach(self, sink: ChatSink) -> None:
        self.hub = sink

    def remote_targets(self, room: str) -> dict[str, int]:
        """Remote nodes (with a live link) that have members in room, and how many."""
        return self.remote.targets(room, self.mesh.links)

    def remote_members(self, room: str) -> list[dict[str, str]]:
        return self.remote.members(room)

    def remote_rooms(self) -> dict[str, int]:
        """Remote member count per room."""
        return self.remote.rooms()

    def forward(self, message: ChatMessage, targets: dict[str, int]) -> list[str]:
        """Once to each node with members; runs in the broadcaster inside chat.broadcast,
        whose context travels along. History stays on each node: nothing else to do."""
        body = {"message": message.to_json()}
        return [node for node in targets if self.mesh.send(node, CHAT_MESSAGE, body)]

    def presence(self, room: str, conn_id: str, user: str, event: str) -> None:
        body = {"room": room, "conn": conn_id, "user": user, "event": event}
        for peer in self.mesh.up_peers():
            self.mesh.send(peer, CHAT_PRESENCE, body)

    async def fetch_history(self, room: str) -> list[ChatMessage]:
        """Recent history of room from a peer that has members in it (empty if none answers)."""
        for node in self.remote_targets(room):
            try:
                body = await self.mesh.request(node, CHAT_HISTORY, {"room": room}, self.history_timeout)
            except LinkError as exc:
                log.info("chat: no history for %r from %s: %s", room, node, exc)
                continue
            raw = body.get("messages")
            if isinstance(raw, list):
                return [m for m in (ChatMessage.from_json(r) for r in raw) if m is not None]
        return []

    # -- what peers send ------------------------------------------------------------
    def _on_message(self, peer: str, message: Message) -> None:
        msg = ChatMessage.from_json(message.body.get("message"))
        if msg is None:
            raise ValueError("chat.message: invalid message")
        self.hub.deliver_remote(msg)

    def _on_presence(self, peer: str, message: Message) -> None:
        b = message.body
        fields = [b.get("room"), b.get("conn"), b.get("user"), b.get("event")]
        if not all(isinstance(v, str) for v in fields) or fields[3] not in ("join", "leave"):
            raise ValueError("chat.presence: room, conn, user and event are required")
        room, conn, user, event = (str(v) for v in fields)
        self._announce([self.remote.apply(peer, room, conn, user, event)])

    def _on_members(self, peer: str, message: Message) -> None:
        raw = message.body.get("rooms")
        if not isinstance(raw, dict):
            raise ValueError("chat.members: rooms must be an object")
        fresh: dict[str, dict[str, str]] = {}
        for room, members in raw.items():
            if isinstance(room, str) and isinstance(members, dict):
                fresh[room] = {c: u for c, u in members.items() if isinstance(c, str) and isinstance(u, str)}
        self._announce(self.remote.replace(peer, fresh))

    def _on_history(self, peer: str, message: Message) -> dict[str, Any]:
        room = message.body.get("room")
        if not isinstance(room, str):
            raise ValueError("chat.history: room must be a string")
        return {"messages": [m.to_json() for m in self.hub.history(room)]}

    def _on_membership(self, event: str, peer: str) -> None:
        if event == "up":
            self.mesh.send(peer, CHAT_MEMBERS, {"rooms": self.hub.local_rooms_snapshot()})
        else:  # down or removed: its members are gone as far as anyone here can tell
            self._announce(self.remote.forget(peer))

    def _announce(self, events: Sequence[Event | None]) -> None:
        for event in events:
            if event is not None:
                self.hub.remote_presence(*event)


class _NoSink:
    """Until a hub attaches: what arrives is dropped (nothing to deliver it to)."""

    def deliver_remote(self, message: ChatMessage) -> None:
        pass

    def remote_presence(self, room: str, user: str, node: str, event: str) -> None:
        pass

    def history(self, room: str) -> list[ChatMessage]:
        return []

    def local_rooms_snapshot(self) -> dict[str, dict[str, str]]:
        return {}
