"""Other nodes' room members as both chat buses keep them (server/chat/presence.py)."""

from __future__ import annotations

from server.chat.presence import RemotePresence


def test_joins_and_leaves_are_announced_once() -> None:
    p = RemotePresence()
    assert p.apply("n2", "r", "c1", "bob", "join") == ("r", "bob", "n2", "join")
    assert p.apply("n2", "r", "c1", "bob", "join") is None  # a repeat changes nothing
    assert p.apply("n3", "r", "c2", "carol", "join") is not None
    assert p.targets("r") == {"n2": 1, "n3": 1} and p.targets("r", reachable={"n3"}) == {"n3": 1}
    assert p.members("r") == [{"user": "bob", "node": "n2"}, {"user": "carol", "node": "n3"}]
    assert p.rooms() == {"r": 2}
    assert p.apply("n2", "r", "c1", "bob", "leave") == ("r", "bob", "n2", "leave")
    assert p.apply("n2", "r", "c1", "bob", "leave") is None
    assert p.forget("n3") == [("r", "carol", "n3", "leave")] and p.rooms() == {}


def test_a_snapshot_replaces_a_node_and_says_what_changed() -> None:
    p = RemotePresence()
    p.apply("n2", "a", "c1", "bob", "join")
    p.apply("n2", "a", "c2", "eve", "join")
    events = p.replace("n2", {"a": {"c1": "bob"}, "b": {"c3": "dan"}}, keep={"c2"})
    assert events == [("b", "dan", "n2", "join")]  # c2 kept: a newer event owns it
    assert p.replace("n2", {}) == [("a", "bob", "n2", "leave"), ("a", "eve", "n2", "leave"),
                                   ("b", "dan", "n2", "leave")]


def test_one_node_cannot_grow_the_table_past_its_limit() -> None:
    p = RemotePresence(max_per_node=2)
    assert [p.apply("n2", "r", f"c{i}", "u", "join") is not None for i in range(3)] == [True, True, False]
    assert p.apply("n3", "r", "c9", "u", "join") is not None  # another node has its own budget
