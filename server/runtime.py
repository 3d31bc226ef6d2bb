"""Process-wide tuning applied once a node has started."""

from __future__ import annotations

import gc
import logging

from server.errors import ConfigError

log = logging.getLogger(__name__)


def parse_gc_thresholds(spec: str) -> tuple[int, int, int] | None:
    """`"200000,100,1000"` -> (200000, 100, 1000); `""` -> None (Python's defaults)."""
    if not spec.strip():
        return None
    try:
        parts = tuple(int(p) for p in spec.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise ConfigError(
            f"gc_thresholds: expected three positive integers like '200000,100,1000', got {spec!r}")
    return parts  # type: ignore[return-value]


def tune_gc(spec: str) -> None:
    """Freeze what start-up allocated and raise the collection thresholds.

    Fan-out wakes one writer per member per message; with Python's default
    threshold (700) the objects of a thousand sends in flight trigger a
    collection every few hundred deliveries, and full collections over a heap
    of ~10^6 objects took half the server's CPU at N=1000 (see bench/RESULTS.md).
    Frozen start-up objects are never traversed again. The default raises
    every generation's threshold: HTTP with tracing keeps ~2,000 finished spans
    queued for export, and full collections over them cost a measurable share
    of throughput at the lower "50000,20,100".
    """
    thresholds = parse_gc_thresholds(spec)
    gc.freeze()
    if thresholds is not None:
        gc.set_threshold(*thresholds)
    log.debug("gc: %d objects frozen, thresholds %s", gc.get_freeze_count(), gc.get_threshold())
