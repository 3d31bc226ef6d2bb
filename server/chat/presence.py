"""Members of rooms on other nodes, as this node learnt them from presence events and
snapshots: the state both chat buses (mesh and valkey) keep. Pure state, no I/O;
every change it makes is returned as the presence events to announce locally."""

from __future__ import annotations

from collections.abc import Container, Mapping

MAX_REMOTE_MEMBERS = 100_000  # per node: a misbehaving node cannot grow this without bound

# (room, user, node, event): event is "join" or "leave"
Event = tuple[str, str, str, str]


class RemotePresence:
    def __init__(self, max_per_node: int = MAX_REMOTE_MEMBERS) -> None:
        self.max_per_node = max_per_node
        self.nodes: dict[str, dict[str, dict[str, str]]] = {}  # node -> room -> connection -> user

    def targets(self, room: str, reachable: Container[str] | None = None) -> dict[str, int]:
        """Nodes (reachable ones, when given) with members in room, and how many."""
        return {node: len(rooms[room]) for node, rooms in self.nodes.items()
                if rooms.get(room) and (reachable is None or node in reachable)}

    def members(self, room: str) -> list[dict[str, str]]:
        return [{"user": user, "node": node} for node, rooms in sorted(self.nodes.items())
                for user in rooms.get(room, {}).values()]

    def rooms(self) -> dict[str, int]:
        """Member count per room, over every other node."""
        counts: dict[str, int] = {}
        for rooms in self.nodes.values():
            for room, members in rooms.items():
                if members:
                    counts[room] = counts.get(room, 0) + len(members)
        return counts

    def apply(self, node: str, room: str, conn: str, user: str, event: str) -> Event | None:
        """One join or leave; the event to announce, or None when nothing changed."""
        rooms = self.nodes.setdefault(node, {})
        members = rooms.setdefault(room, {})
        if event == "join":
            if conn in members or sum(len(m) for m in rooms.values()) >= self.max_per_node:
                return None
            members[conn] = user
        elif members.pop(conn, None) is None:
            return None
        if not members:
            rooms.pop(room, None)
        return (room, user, node, event)

    def replace(self, node: str, fresh: Mapping[str, Mapping[str, str]],
                keep: Container[str] = ()) -> list[Event]:
        """A node's whole membership (room -> connection -> user) as just learnt: what
        changed, as events. Connections in `keep` are left as they are (a newer event
        changed them after the snapshot was taken)."""
        events: list[Event] = []
        for room, members in list(self.nodes.get(node, {}).items()):
            for conn, user in list(members.items()):
                if conn not in fresh.get(room, {}) and conn not in keep \
                        and (event := self.apply(node, room, conn, user, "leave")):
                    events.append(event)
        for room, fresh_members in fresh.items():
            for conn, user in fresh_members.items():
                if conn not in keep and (event := self.apply(node, room, conn, user, "join")):
                    events.append(event)
        return events

    def forget(self, node: str) -> list[Event]:
        """A node is down or gone: its members leave."""
        return [(room, user, node, "leave")
                for room, members in self.nodes.pop(node, {}).items() for user in members.values()]
