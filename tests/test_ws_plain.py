"""The original's plain-text WebSocket protocol, on a real node."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from server.serve import RunningNode
from tests.harness import close_reason, start_node, ws_url


async def _get(ws: WebSocketConnection, timeout: float = 5) -> dict[str, Any]:
    with trio.fail_after(timeout):
        return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def test_others_receive_user_text_timestamp(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=alice")) as alice, \
            open_websocket_url(ws_url(node, "username=bob")) as bob:
        await alice.send_message("hello bob")
        frame = await _get(bob)
        assert set(frame) == {"user", "text", "timestamp"}
        assert frame["user"] == "alice" and frame["text"] == "hello bob"
        assert frame["timestamp"].endswith("Z")
        # The sender does not get its own message back.
        await bob.send_message("hi alice")
        assert (await _get(alice))["text"] == "hi alice"


async def test_default_username_is_guest(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node)) as anon, \
            open_websocket_url(ws_url(node, "username=bob")) as bob:
        await anon.send_message("who am i")
        assert (await _get(bob))["user"] == "Guest"


async def test_last_50_messages_on_connect_oldest_first(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=alice")) as alice, \
            open_websocket_url(ws_url(node, "username=watcher")) as watcher:
        for i in range(60):
            await alice.send_message(f"m{i}")
        for _ in range(60):  # all fanned out before the newcomer joins
            await _get(watcher)
    async with open_websocket_url(ws_url(node, "username=late")) as late:
        texts = [(await _get(late))["text"] for _ in range(50)]
        assert texts == [f"m{i}" for i in range(10, 60)]
        with trio.move_on_after(0.2):
            extra = await late.get_message()
            pytest.fail(f"more than 50 history frames: {extra!r}")


async def test_bad_username_is_refused_with_1008(node: RunningNode) -> None:
    for query in ("username=", "username=" + "x" * 65, "username=a%0Ab"):
        async with open_websocket_url(ws_url(node, query)) as ws:
            with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
                await ws.get_message()
            code, reason = close_reason(info.value)
            assert code == 1008 and "username" in reason


async def test_binary_frame_closes_1003(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=alice")) as ws:
        await ws.send_message(b"\x00\x01")
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
            await ws.get_message()
        code, reason = close_reason(info.value)
        assert code == 1003 and "binary" in reason


async def test_oversized_message_closes_1009_and_is_not_delivered(node: RunningNode) -> None:
    limit = node.node.settings.ws_max_message_size
    async with open_websocket_url(ws_url(node, "username=big")) as big, \
            open_websocket_url(ws_url(node, "username=bob")) as bob:
        await big.send_message("x" * (limit + 1))
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
            await big.get_message()
        code, reason = close_reason(info.value)
        assert code == 1009 and str(limit) in reason
        with trio.move_on_after(0.2):
            pytest.fail(f"oversized message delivered: {(await bob.get_message())[:50]!r}")
    assert node.node.hub.history("default") == []


async def test_chat_text_over_limit_gets_an_error_frame(node: RunningNode) -> None:
    limit = node.node.settings.max_chat_text_bytes
    async with open_websocket_url(ws_url(node, "username=alice")) as alice:
        await alice.send_message("y" * (limit + 1))
        frame = await _get(alice)
        assert "error" in frame and str(limit) in frame["error"]
    assert node.node.hub.history("default") == []


async def test_disconnect_leaves_the_room(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=alice")):
        with trio.fail_after(5):  # the server joins it to `default` just after the handshake
            while (room := node.node.hub.rooms.get("default")) is None or not room.members:
                await trio.sleep(0.01)
        assert len(room.members) == 1
    with trio.fail_after(5):
        while room.members:
            await trio.sleep(0.01)
    assert node.node.hub.connections == {}


async def test_history_longer_than_the_outbound_queue_still_arrives(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    node = await start_node(nursery, exporter, outbound_queue_size=4)
    async with open_websocket_url(ws_url(node, "username=alice")) as alice:
        for i in range(20):
            await alice.send_message(f"m{i}")
        with trio.fail_after(5):
            while len(node.node.hub.history("default")) < 20:
                await trio.sleep(0.01)
    async with open_websocket_url(ws_url(node, "username=late")) as late:
        assert [(await _get(late))["text"] for _ in range(20)] == [f"m{i}" for i in range(20)]
    node.stop()


@pytest.mark.parametrize("text", ["", "  \n"])
async def test_blank_text_is_refused_with_an_error_frame_and_not_broadcast(
        node: RunningNode, text: str) -> None:
    # As for any bad text (e.g. over the limit): the sender is told, the connection stays.
    async with open_websocket_url(ws_url(node, "username=alice")) as alice, \
            open_websocket_url(ws_url(node, "username=bob")) as bob:
        await alice.send_message(text)
        assert await _get(alice) == {"error": "text: can't be blank"}
        await alice.send_message("after")
        assert (await _get(bob))["text"] == "after"  # the first frame bob gets: no blank one
    assert [m.text for m in node.node.hub.history("default")] == ["after"]
