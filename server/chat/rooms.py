"""Rooms: who is in each, and each room's recent history. Pure state, no I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from server.chat.connection import Connection
from server.errors import Unavailable


@dataclass(frozen=True)
class ChatMessage:
    room: str
    user: str
    text: str
    timestamp: str  # ISO 8601 UTC, millisecond precision
    id: str
    node: str
    trace_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"room": self.room, "user": self.user, "text": self.text,
               "timestamp": self.timestamp, "id": self.id, "node": self.node}
        if self.trace_id:
            out["trace_id"] = self.trace_id
        return out

    @classmethod
    def from_json(cls, raw: Any) -> ChatMessage | None:
        """A message as another node sent it; None when it is not one."""
        if not isinstance(raw, dict):
            return None
        fields = {k: raw.get(k) for k in ("room", "user", "text", "timestamp", "id", "node")}
        if not all(isinstance(v, str) for v in fields.values()):
            return None
        trace_id = raw.get("trace_id")
        return cls(**fields, trace_id=trace_id if isinstance(trace_id, str) else None)  # type: ignore[arg-type]

    def to_plain(self) -> dict[str, Any]:
        """The original's frame: exactly user, text, timestamp."""
        return {"user": self.user, "text": self.text, "timestamp": self.timestamp}


@dataclass(eq=False)
class Room:
    name: str
    history_size: int
    members: dict[str, Connection] = field(default_factory=dict)
    history: deque[ChatMessage] = field(init=False)

    def __post_init__(self) -> None:
        self.history = deque(maxlen=self.history_size)


class Rooms:
    def __init__(self, *, history_size: int, max_rooms: int, node_name: str) -> None:
        self.history_size = history_size
        self.max_rooms = max_rooms
        self.node_name = node_name
        self._rooms: dict[str, Room] = {}

    def get(self, name: str) -> Room | None:
        return self._rooms.get(name)

    def all(self) -> list[Room]:
        return list(self._rooms.values())

    def ensure(self, name: str) -> Room:
        return self._rooms.get(name) or self._create(name)

    def join(self, name: str, conn: Connection) -> Room:
        room = self.ensure(name)
        room.members[conn.id] = conn
        conn.rooms.add(name)
        return room

    def leave(self, name: str, conn: Connection) -> Room | None:
        room = self._rooms.get(name)
        conn.rooms.discard(name)
        if room is None or room.members.pop(conn.id, None) is None:
            return None
        return room

    def members_json(self, room: Room) -> list[dict[str, str]]:
        return [{"user": c.username, "node": self.node_name} for c in room.members.values()]

    def _create(self, name: str) -> Room:
        if len(self._rooms) >= self.max_rooms:
            # Reclaim an idle room (no members) before refusing: history of
            # abandoned rooms is the only thing that would grow without bound.
            idle = next((r for r in self._rooms.values() if not r.members), None)
            if idle is None:
                raise Unavailable(f"the node holds its limit of {self.max_rooms} rooms")
            del self._rooms[idle.name]
        room = Room(name, self.history_size)
        self._rooms[name] = room
        return room
