"""Who is in the cluster, as one node sees it. Pure state, no I/O.

A member is any node this node has completed an authenticated handshake with
(plus itself). Addresses learnt by gossip are only *candidates*: they become
members when a link to them authenticates, so a stale or forged address list
cannot add anyone. A member silent past failure_timeout is `down` (still a
member: its keys stay placed on it, and quorums count it as missing); one down
past member_removal_timeout is removed, but only while this node sees a
majority of members up, so an isolated minority never shrinks the cluster
under itself and starts accepting writes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(Enum):
    UP = "up"
    DOWN = "down"


@dataclass
class Member:
    name: str
    cluster_address: str
    http_url: str
    status: Status = Status.UP
    last_seen: float = 0.0  # trio clock
    last_seen_wall: float = 0.0  # time.time(), for humans
    down_since: float | None = None

    def to_json(self, now_wall: float | None = None) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "status": self.status.value,
                                  "cluster_address": self.cluster_address, "http_url": self.http_url,
                                  "last_seen": self.last_seen_wall}
        return out


@dataclass
class Membership:
    self_name: str
    self_address: str
    self_url: str
    members: dict[str, Member] = field(default_factory=dict)
    candidates: set[str] = field(default_factory=set)  # cluster addresses to dial
    version: int = 0  # bumped on every change that moves key placement or presence
    # Since when this node has seen a majority up: down time only counts toward
    # removal while it has one, so regaining a majority does not remove at once.
    majority_since: float | None = None

    def up_names(self) -> list[str]:
        return [self.self_name, *sorted(n for n, m in self.members.items() if m.status is Status.UP)]

    def placement_names(self) -> list[str]:
        """Everyone keys are placed on: self and every member, up or down."""
        return [self.self_name, *sorted(self.members)]

    def seen(self, name: str, address: str, url: str, now: float, wall: float) -> bool:
        """A member answered (handshake or heartbeat); True when that changed its status."""
        member = self.members.get(name)
        changed = False
        if member is None:
            member = self.members[name] = Member(name, address, url)
            changed = True
        elif member.status is Status.DOWN:
            member.status, member.down_since = Status.UP, None
            changed = True
        member.cluster_address, member.http_url = address or member.cluster_address, url or member.http_url
        member.last_seen, member.last_seen_wall = now, wall
        self.candidates.discard(address)
        if changed:
            self.version += 1
        return changed

    def learn(self, address: str) -> bool:
        """A cluster address heard of by gossip; True when it is new."""
        if not address or address == self.self_address or address in self.candidates:
            return False
        if any(m.cluster_address == address for m in self.members.values()):
            return False
        self.candidates.add(address)
        return True

    def check(self, now: float, failure_timeout: float,
              removal_timeout: float) -> tuple[list[str], list[str]]:
        """Mark silent members down and remove long-dead ones; returns (went_down, removed)."""
        went_down, removed = [], []
        for m in self.members.values():
            if m.status is Status.UP and now - m.last_seen > failure_timeout:
                m.status, m.down_since = Status.DOWN, now
                went_down.append(m.name)
        up = len(self.up_names())
        if up * 2 <= len(self.members) + 1:  # no strict majority of all members, self included
            self.majority_since = None
        else:
            if self.majority_since is None:
                self.majority_since = now
            counted_from = self.majority_since
            for m in list(self.members.values()):
                if m.down_since is not None and now - max(m.down_since, counted_from) > removal_timeout:
                    del self.members[m.name]
                    self.candidates.add(m.cluster_address)  # keep dialing: it may come back
                    removed.append(m.name)
        if went_down or removed:
            self.version += 1
        return went_down, removed

    def gossip(self) -> list[dict[str, str]]:
        """What this node tells peers: itself and every member it knows."""
        out = [{"name": self.self_name, "address": self.self_address}]
        out += [{"name": m.name, "address": m.cluster_address} for m in self.members.values()]
        return out
