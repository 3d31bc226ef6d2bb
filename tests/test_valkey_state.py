"""The valkey engine's pure state: the node table its heartbeats feed, key names,
and how a re-read presence hash is reconciled with presence events."""

from __future__ import annotations

from typing import Any

import trio

from server.chat.rooms import ChatMessage
from server.engine.valkey.chat import ValkeyChat
from server.engine.valkey.keys import Keys, presence_field, split_presence_field
from server.engine.valkey.members import NodeTable, heartbeat_json


def test_nodes_come_up_go_down_on_an_expired_heartbeat_and_are_dropped_later() -> None:
    table = NodeTable("me", "http://me")
    up, down, dropped = table.update({"me": "x", "a": heartbeat_json("a", "http://a")}, 0.0, 30.0)
    assert (up, down, dropped) == (["a"], [], [])
    assert table.up_names() == ["a"] and table.nodes["a"].http_url == "http://a"
    assert table.update({"me": "x", "a": None}, 1.0, 30.0) == ([], ["a"], [])
    assert table.up_names() == [] and table.describe("up")[1]["status"] == "down"
    assert table.update({"me": "x", "a": None}, 20.0, 30.0) == ([], [], [])  # not yet
    assert table.update({"me": "x", "a": None}, 32.0, 30.0) == ([], [], ["a"])
    assert "a" not in table.nodes
    # Back again, and gone from the set (someone else dropped it): down at once.
    table.update({"me": "x", "a": heartbeat_json("a", "http://a")}, 40.0, 30.0)
    assert table.update({"me": "x"}, 41.0, 30.0) == ([], ["a"], [])


def test_a_stale_name_never_seen_alive_is_dropped_at_once() -> None:
    table = NodeTable("me", "")
    assert table.update({"me": "x", "ghost": None}, 0.0, 30.0) == ([], [], ["ghost"])


def test_keys_share_slots_where_they_are_read_together() -> None:
    keys = Keys("p")
    assert keys.history("r1").endswith("{r1}") and keys.room_channel("r1").endswith("{r1}")
    assert {keys.nodes[:3], keys.node("n")[:3], keys.presence("n")[:3], keys.presence_channel[:3]} == {"{p}"}
    assert split_presence_field(presence_field("room", "c1")) == ("room", "c1")
    assert split_presence_field("garbage") is None


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def deliver_remote(self, message: ChatMessage) -> None:
        pass

    def remote_presence(self, room: str, user: str, node: str, event: str) -> None:
        self.events.append((room, user, node, event))

    def history(self, room: str) -> list[ChatMessage]:
        return []

    def local_rooms_snapshot(self) -> dict[str, dict[str, str]]:
        return {}


def _chat() -> tuple[ValkeyChat, _Sink]:
    client: Any = type("C", (), {"while_connected": lambda self, task: None, "cluster": False})()
    chat = ValkeyChat(client, Keys("p"), node_name="me", history_size=50, presence_ttl_ms=1000)
    sink = _Sink()
    chat.attach(sink)
    return chat, sink


async def test_a_re_read_hash_announces_what_events_missed_but_never_undoes_a_newer_event() -> None:
    chat, sink = _chat()
    chat.replace_presence("n2", {presence_field("r", "c1"): "bob"}, trio.current_time())
    assert sink.events == [("r", "bob", "n2", "join")]
    assert chat.remote_targets("r") == {"n2": 1}
    assert chat.remote_members("r") == [{"user": "bob", "node": "n2"}]
    read_at = trio.current_time()
    await trio.sleep(0.01)
    # A join and a leave arrive as events after the read began...
    chat._on_pubsub(chat.keys.presence_channel,
                    '{"node":"n2","room":"r","conn":"c2","user":"carol","event":"join"}')
    chat._on_pubsub(chat.keys.presence_channel,
                    '{"node":"n2","room":"r","conn":"c1","user":"bob","event":"leave"}')
    # ...and the (older) read shows bob but not carol: neither is undone.
    chat.replace_presence("n2", {presence_field("r", "c1"): "bob"}, read_at)
    assert chat.remote_members("r") == [{"user": "carol", "node": "n2"}]
    # A later read is the truth again; a node that went away takes its members along.
    chat.replace_presence("n2", {presence_field("r", "c3"): "dan"}, trio.current_time() + 1)
    assert chat.remote_members("r") == [{"user": "dan", "node": "n2"}]
    chat.forget_node("n2")
    assert chat.remote_rooms() == {} and sink.events[-1] == ("r", "dan", "n2", "leave")


def test_malformed_payloads_and_own_messages_are_ignored() -> None:
    chat, sink = _chat()
    chat._on_pubsub(chat.keys.presence_channel, "not json")
    chat._on_pubsub(chat.keys.presence_channel, '{"node":"n2","event":"dance"}')
    chat._on_pubsub(chat.keys.presence_channel,
                    '{"node":"me","room":"r","conn":"c","user":"u","event":"join"}')
    assert sink.events == [] and chat.remote.nodes == {}
