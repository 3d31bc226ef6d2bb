"""Membership on Valkey: each node keeps a heartbeat key alive and reads everyone's.

Every heartbeat_interval a node writes `node:<name>` (its description) with a
TTL of failure_timeout, adds its name to the `nodes` set and renews its
presence hash's TTL; then it reads the set and the heartbeat keys. A node whose
key has expired is down (its chat members leave presence, their hash expires
with it); one down for member_removal_timeout is dropped from the set. The
table itself is pure state, like server/cluster/membership.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class NodeRecord:
    name: str
    http_url: str = ""
    up: bool = True
    last_seen_wall: float = 0.0
    down_since: float | None = None  # trio clock

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "status": "up" if self.up else "down", "http_url": self.http_url,
                "last_seen": self.last_seen_wall}


@dataclass
class NodeTable:
    """Other nodes as the last read of Valkey showed them."""

    self_name: str
    self_url: str
    nodes: dict[str, NodeRecord] = field(default_factory=dict)

    def update(self, heartbeats: dict[str, str | None], now: float,
               removal_timeout: float) -> tuple[list[str], list[str], list[str]]:
        """Apply one read (name -> heartbeat JSON, None when expired); returns the
        names that came up, went down and are to be dropped from the set."""
        came_up, went_down, dropped = [], [], []
        for name, raw in heartbeats.items():
            if name == self.self_name:
                continue
            record = self.nodes.get(name)
            if raw is not None:
                described = _description(raw)
                if record is None:
                    record = self.nodes[name] = NodeRecord(name)
                    came_up.append(name)
                elif not record.up:
                    came_up.append(name)
                record.up, record.down_since = True, None
                record.http_url = str(described.get("http_url", record.http_url))
                record.last_seen_wall = time.time()
            elif record is None or not record.up:
                if record is None or (record.down_since is not None
                                      and now - record.down_since > removal_timeout):
                    self.nodes.pop(name, None)
                    dropped.append(name)
            else:
                record.up, record.down_since = False, now
                went_down.append(name)
        for name in set(self.nodes) - set(heartbeats):  # gone from the set: someone dropped it
            if self.nodes.pop(name).up:
                went_down.append(name)
        return came_up, went_down, dropped

    def mark_all_down(self, now: float) -> list[str]:
        """Valkey is unreachable: nobody can be seen alive."""
        went_down = []
        for record in self.nodes.values():
            if record.up:
                record.up, record.down_since = False, now
                went_down.append(record.name)
        return went_down

    def up_names(self) -> list[str]:
        return sorted(n for n, r in self.nodes.items() if r.up)

    def describe(self, self_status: str) -> list[dict[str, object]]:
        me: dict[str, object] = {"name": self.self_name, "status": self_status, "self": True,
                                 "http_url": self.self_url, "last_seen": time.time()}
        return [me] + [r.to_json() for _, r in sorted(self.nodes.items())]


def heartbeat_json(name: str, http_url: str) -> str:
    return json.dumps({"name": name, "http_url": http_url}, separators=(",", ":"))


def _description(raw: str) -> dict[str, Any]:
    try:
        described = json.loads(raw)
    except ValueError:
        return {}
    return described if isinstance(described, dict) else {}
