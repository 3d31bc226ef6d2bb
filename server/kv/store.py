"""The key-value state of one node: versioned entries, last writer wins, deletes as
tombstones. Pure state, no I/O, so replication can merge entries from peers with
the same rule the local writes use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.errors import StoreFull
from server.kv.clock import HybridClock, Timestamp


@dataclass(frozen=True, order=True)
class Version:
    """Total order: timestamp first, then the writer's node name as tie-break, so
    every replica picks the same winner."""

    timestamp: Timestamp
    writer: str

    def to_json(self) -> dict[str, Any]:
        return {"wall_ms": self.timestamp.wall_ms, "counter": self.timestamp.counter,
                "writer": self.writer}


@dataclass(frozen=True)
class Entry:
    key: str
    value: Any  # any JSON value; None for a tombstone
    version: Version
    deleted: bool = False


class Store:
    def __init__(self, node_name: str, *, max_keys: int, clock: HybridClock | None = None) -> None:
        self.node_name = node_name
        self.max_keys = max_keys
        self.clock = clock or HybridClock()
        self._entries: dict[str, Entry] = {}

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if not e.deleted)

    def get(self, key: str) -> Entry | None:
        """The live entry for key, or None when absent or deleted."""
        entry = self._entries.get(key)
        return None if entry is None or entry.deleted else entry

    def entry(self, key: str) -> Entry | None:
        """The stored entry, tombstones included."""
        return self._entries.get(key)

    def entries(self) -> list[Entry]:
        """Every stored entry, tombstones included (a snapshot: safe across awaits)."""
        return list(self._entries.values())

    def new_entry(self, key: str, value: Any, *, deleted: bool = False) -> Entry:
        """A new version written by this node, not stored yet (replication applies it)."""
        return Entry(key, None if deleted else value, Version(self.clock.now(), self.node_name), deleted)

    def put(self, key: str, value: Any) -> Entry:
        self._check_room(key)
        entry = Entry(key, value, Version(self.clock.now(), self.node_name))
        self._entries[key] = entry
        return entry

    def delete(self, key: str) -> Entry | None:
        """Write a tombstone; returns the entry it replaced, or None if none was live."""
        previous = self.get(key)
        if previous is None:
            return None
        self._entries[key] = Entry(key, None, Version(self.clock.now(), self.node_name), True)
        return previous

    def merge(self, entry: Entry) -> bool:
        """Apply an entry from elsewhere if it is newer; True when it changed state."""
        self.clock.observe(entry.version.timestamp)
        current = self._entries.get(entry.key)
        if current is not None and current.version >= entry.version:
            return False
        if current is None:
            self._check_room(entry.key)
        self._entries[entry.key] = entry
        return True

    def _check_room(self, key: str) -> None:
        # Tombstones count: they must outlive partitions, so they take space too.
        if key in self._entries or len(self._entries) < self.max_keys:
            return
        # Full: reclaim the oldest tombstone before refusing (local-only; the
        # cluster's anti-entropy will own tombstone expiry).
        tombstones = [e for e in self._entries.values() if e.deleted]
        if not tombstones:
            raise StoreFull(f"the store holds its limit of {self.max_keys} keys")
        del self._entries[min(tombstones, key=lambda e: e.version).key]


def entry_to_json(entry: Entry) -> dict[str, Any]:
    out = {"key": entry.key, "version": entry.version.to_json(), "deleted": entry.deleted}
    if not entry.deleted:
        out["value"] = entry.value
    return out


def entry_from_json(raw: Any) -> Entry:
    """An entry from a peer; ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("entry: must be an object")
    key, version, deleted = raw.get("key"), raw.get("version"), raw.get("deleted", False)
    if not isinstance(key, str) or not key:
        raise ValueError("entry.key: must be a non-empty string")
    if not isinstance(deleted, bool):
        raise ValueError("entry.deleted: must be a boolean")
    return Entry(key, None if deleted else raw.get("value"), version_from_json(version), deleted)


def version_from_json(raw: Any) -> Version:
    """A version from a peer; ValueError naming what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("version: must be an object")
    wall, counter, writer = raw.get("wall_ms"), raw.get("counter"), raw.get("writer")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (wall, counter)):
        raise ValueError("version: wall_ms and counter must be non-negative integers")
    if not isinstance(writer, str) or not writer:
        raise ValueError("version.writer: must be a non-empty string")
    return Version(Timestamp(wall, counter), writer)  # type: ignore[arg-type]
