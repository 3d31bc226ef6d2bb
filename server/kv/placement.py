"""Which nodes hold a key: rendezvous (highest random weight) hashing.

Every node computes the same order from the same member list, and removing a
member only moves the keys it held (the others keep their order), so a
membership change hands off as little as possible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def _weight(key: str, node: str) -> int:
    digest = hashlib.blake2b(f"{key}\x00{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def replicas_for(key: str, nodes: Iterable[str], count: int) -> list[str]:
    """The `count` nodes with the highest weight for key, best first."""
    return sorted(nodes, key=lambda node: (_weight(key, node), node), reverse=True)[:count]
