"""Names of the valkey engine's keys and channels (pure; one prefix for a deployment).

Cluster-safe: what is read together shares a hash slot through the `{prefix}`
hash tag (the node list, node heartbeats, presence hashes, the presence
channel); a room's history and channel share the room's slot (`{room}`); KV
keys spread over all slots (one key per call). In a Cluster, channels are
sharded ones, served by the shard that owns their slot.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    @property
    def _tag(self) -> str:
        return "{" + self.prefix + "}"

    def kv(self, key: str) -> str:
        return f"{self.prefix}:kv:{key}"

    # A room's history and channel share the room's hash slot: one pipeline writes both.
    def history(self, room: str) -> str:
        return f"{self.prefix}:history:{{{room}}}"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{{{room}}}"

    @property
    def nodes(self) -> str:
        """A set of node names; each name's heartbeat key says whether it is alive."""
        return f"{self._tag}:nodes"

    def node(self, name: str) -> str:
        """A node's heartbeat: its description, expiring unless refreshed."""
        return f"{self._tag}:node:{name}"

    def presence(self, name: str) -> str:
        """A node's members: field `room\\x1fconnection id` -> username; expires with the node."""
        return f"{self._tag}:presence:{name}"

    @property
    def presence_channel(self) -> str:
        return f"{self._tag}:presence"


FIELD_SEPARATOR = "\x1f"


def presence_field(room: str, conn_id: str) -> str:
    return f"{room}{FIELD_SEPARATOR}{conn_id}"


def split_presence_field(field: str) -> tuple[str, str] | None:
    room, sep, conn_id = field.rpartition(FIELD_SEPARATOR)
    return (room, conn_id) if sep and room and conn_id else None
