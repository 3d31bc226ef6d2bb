"""The engine interface: where a node's shared state lives and how nodes reach each other.

A node's front ends (HTTP routes, WebSocket sessions, the chat hub) never talk
to the cluster directly; they go through one `Engine`:

- `kv`: the key-value store (`KVStore`): get, put, delete, with the `kv.*` spans.
- `chat`: the chat bus between nodes (`ChatBus`), or None on a single node: the
  hub hands it every message after local fan-out, and it delivers messages,
  presence and history from other nodes to the hub (a `ChatSink`).
- membership: `live_members()` for `GET /nodes`, `describe_members()` for `?detail=1`.
- `run()`: the engine's long-lived tasks (links, heartbeats, subscriptions).

Engines: `memory` (one node, state in this process: server/engine/memory.py),
`mesh` (our own cluster: server/engine/mesh.py), `valkey` (state in Valkey or
Redis: server/engine/valkey/). Which one is `Settings.engine_kind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import trio

from server.chat.rooms import ChatMessage
from server.kv.store import Entry


@dataclass(frozen=True)
class Read:
    entry: Entry | None  # the live entry, None when absent or deleted
    from_node: str  # the node whose answer was used


class KVStore(Protocol):
    """Raises Unavailable (503) when the engine cannot answer in time, StoreFull (507)
    when it is out of room; never hangs past its deadline."""

    @property
    def node_name(self) -> str: ...

    async def get(self, key: str) -> Read: ...

    async def put(self, key: str, value: Any) -> Entry: ...

    async def delete(self, key: str) -> bool:
        """True when a live value was there."""
        ...


class ChatSink(Protocol):
    """What a chat bus delivers to and asks of its node's hub (never awaits)."""

    def deliver_remote(self, message: ChatMessage) -> None: ...

    def remote_presence(self, room: str, user: str, node: str, event: str) -> None: ...

    def history(self, room: str) -> list[ChatMessage]: ...

    def local_rooms_snapshot(self) -> dict[str, dict[str, str]]:
        """room -> connection id -> username, of this node's members."""
        ...


class ChatBus(Protocol):
    """Chat between nodes, as the hub sees it. Synchronous methods run in the
    broadcaster or a connection's cleanup: they queue, never await."""

    def attach(self, sink: ChatSink) -> None: ...

    def remote_targets(self, room: str) -> dict[str, int]:
        """Other nodes with members in room, and how many each has."""
        ...

    def forward(self, message: ChatMessage, targets: dict[str, int]) -> list[str]:
        """Send a message sent on this node to the other nodes (called for every
        message, in the broadcaster, inside `chat.broadcast`); the nodes it went to."""
        ...

    def presence(self, room: str, conn_id: str, user: str, event: str) -> None:
        """A local member joined or left room (event "join" or "leave")."""
        ...

    def remote_members(self, room: str) -> list[dict[str, str]]:
        """[{"user", "node"}] of room's members on other nodes."""
        ...

    def remote_rooms(self) -> dict[str, int]:
        """Member count per room on other nodes."""
        ...

    async def fetch_history(self, room: str) -> list[ChatMessage]:
        """The room's recent history, oldest first, before a first local member joins
        (empty when nobody can tell; never raises, never waits past its deadline)."""
        ...


class PeerError(Exception):
    """Another node could not be asked (no link, no answer in time, bad reply)."""


class Engine(Protocol):
    @property
    def kind(self) -> str:
        """"memory", "mesh" or "valkey"."""
        ...

    @property
    def kv(self) -> KVStore: ...

    @property
    def chat(self) -> ChatBus | None:
        """None on a single node."""
        ...

    def live_members(self) -> list[str]:
        """This node first, then every other node it sees alive."""
        ...

    def describe_members(self) -> list[dict[str, object]]:
        """Every member with status, addresses and last-seen time (self first)."""
        ...

    def advertise(self, http_url: str) -> None:
        """Tell other nodes this node's URL is http_url from now on (learnt late, e.g.
        under the Hypercorn CLI)."""
        ...

    def trace_peers(self) -> list[str]:
        """Other nodes to ask for a trace's spans (GET /debug/traces)."""
        ...

    async def peer_spans(self, peer: str, trace_id: str, within_s: float) -> dict[str, Any]:
        """One peer's reply to a trace lookup ({"spans": [...], "truncated": bool});
        raises PeerError."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The engine's long-lived tasks; returns only when cancelled."""
        ...
