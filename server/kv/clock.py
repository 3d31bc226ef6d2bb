"""Hybrid logical clock: wall-clock milliseconds plus a counter, so versions made
on different nodes order sensibly and never go backwards on one node."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple


class Timestamp(NamedTuple):
    wall_ms: int
    counter: int


class HybridClock:
    def __init__(self, now_ms: Callable[[], int] | None = None) -> None:
        self._now_ms = now_ms or (lambda: time.time_ns() // 1_000_000)
        self._last = Timestamp(0, 0)

    def now(self) -> Timestamp:
        wall = self._now_ms()
        if wall > self._last.wall_ms:
            self._last = Timestamp(wall, 0)
        else:
            self._last = Timestamp(self._last.wall_ms, self._last.counter + 1)
        return self._last

    def observe(self, seen: Timestamp) -> None:
        """Move past a timestamp seen from another node (used by replication)."""
        if seen > self._last:
            self._last = seen
