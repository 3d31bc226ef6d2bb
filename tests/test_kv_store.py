from __future__ import annotations

import pytest

from server.errors import StoreFull
from server.kv.clock import HybridClock, Timestamp
from server.kv.store import Entry, Store, Version


def fixed_clock(*times: int) -> HybridClock:
    it = iter(times)
    return HybridClock(lambda: next(it))


def test_hybrid_clock_never_goes_backwards() -> None:
    clock = fixed_clock(100, 100, 90, 101)
    assert [clock.now() for _ in range(4)] == [
        Timestamp(100, 0), Timestamp(100, 1), Timestamp(100, 2), Timestamp(101, 0)]
    clock.observe(Timestamp(500, 3))
    assert clock._last == Timestamp(500, 3)


def test_put_get_delete_tombstone() -> None:
    store = Store("n1", max_keys=10, clock=fixed_clock(1, 2))
    entry = store.put("k", {"v": 1})
    assert store.get("k") == entry and entry.version == Version(Timestamp(1, 0), "n1")
    previous = store.delete("k")
    assert previous == entry
    assert store.get("k") is None
    tomb = store.entry("k")
    assert tomb is not None and tomb.deleted and tomb.value is None and tomb.version.timestamp.wall_ms == 2
    assert store.delete("k") is None and len(store) == 0


def test_merge_is_last_writer_wins_with_writer_tie_break() -> None:
    store = Store("n1", max_keys=10)
    a = Entry("k", "a", Version(Timestamp(5, 0), "n1"))
    b = Entry("k", "b", Version(Timestamp(5, 0), "n2"))
    old = Entry("k", "old", Version(Timestamp(4, 9), "n9"))
    assert store.merge(a) and store.merge(b) and not store.merge(a) and not store.merge(old)
    assert store.get("k") == b
    tomb = Entry("k", None, Version(Timestamp(6, 0), "n1"), deleted=True)
    assert store.merge(tomb) and store.get("k") is None
    assert not store.merge(b)  # an older write does not resurrect a deleted key


def test_key_limit_reclaims_tombstones_before_refusing() -> None:
    store = Store("n1", max_keys=2)
    store.put("a", 1)
    store.put("b", 2)
    with pytest.raises(StoreFull, match="limit of 2 keys"):
        store.put("c", 3)
    store.put("a", 9)  # an existing key can always be overwritten
    store.delete("a")
    store.put("c", 3)
    assert store.entry("a") is None and store.get("c") is not None
