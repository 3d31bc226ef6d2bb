"""The webserver.v1 JSON protocol: rooms, history, presence, KV, refs, errors."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from server.serve import RunningNode
from tests.harness import close_reason, json_client, ws_url


async def test_subprotocol_is_negotiated(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=a"), subprotocols=["webserver.v1"]) as ws:
        assert ws.subprotocol == "webserver.v1"


async def test_query_parameter_selects_json_too(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=a&protocol=json")) as ws:
        await ws.send_message(json.dumps({"type": "ping", "ref": 7}))
        with trio.fail_after(5):
            reply = json.loads(await ws.get_message())
        assert reply["type"] == "pong" and reply["ref"] == 7


async def test_join_chat_and_presence(node: RunningNode) -> None:
    async with json_client(node, "alice") as alice, json_client(node, "bob") as bob:
        joined = await alice.request("join", room="lobby")
        assert joined["type"] == "ok" and joined["op"] == "join" and joined["room"] == "lobby"
        assert joined["members"] == [{"user": "alice", "node": node.node.name}]
        assert joined["history"] == []
        await bob.request("join", room="lobby")
        presence = await alice.push("presence")
        assert presence == {"type": "presence", "room": "lobby", "event": "join", "user": "bob",
                            "node": node.node.name}

        sent = await bob.request("chat", room="lobby", text="hello")
        assert sent["op"] == "chat" and sent["room"] == "lobby" and len(sent["trace_id"]) == 32
        message = await alice.push("message")
        assert message["user"] == "bob" and message["text"] == "hello" and message["room"] == "lobby"
        assert message["id"] == sent["id"] and message["trace_id"] == sent["trace_id"]

        left = await bob.request("leave", room="lobby")
        assert left["op"] == "leave"
        presence = await alice.push("presence")
        assert presence["event"] == "leave" and presence["user"] == "bob"


async def test_rooms_are_separate_and_a_client_can_be_in_several(node: RunningNode) -> None:
    async with json_client(node, "alice") as alice, json_client(node, "bob") as bob:
        await alice.request("join", room="a")
        await alice.request("join", room="b")
        await bob.request("join", room="b")
        await bob.request("chat", room="b", text="to b")
        assert (await alice.push("message"))["room"] == "b"
        with pytest.raises(trio.TooSlowError):
            await bob.push("message", timeout=0.2)


async def test_history_on_join_and_rooms_routes(node: RunningNode) -> None:
    async with json_client(node, "alice") as alice:
        await alice.request("join", room="hist")
        for i in range(55):
            await alice.request("chat", room="hist", text=f"t{i}")
    async with json_client(node, "bob") as bob:
        joined = await bob.request("join", room="hist")
        texts = [m["text"] for m in joined["history"]]
        assert texts == [f"t{i}" for i in range(5, 55)]
        assert all(m["type"] == "message" and m["user"] == "alice" for m in joined["history"])

        import httpx
        async with httpx.AsyncClient(base_url=node.url) as http:
            room = (await http.get("/rooms/hist")).json()
            assert room["members"] == [{"user": "bob", "node": node.node.name}]
            assert [m["text"] for m in room["history"]] == texts
            rooms = (await http.get("/rooms")).json()["rooms"]
            assert {"room": "hist", "members": 1, "messages": 50} in rooms


async def test_plain_and_json_clients_share_the_default_room(node: RunningNode) -> None:
    async with open_websocket_url(ws_url(node, "username=old")) as old, json_client(node, "new") as new:
        await new.request("join", room="default")
        await new.request("chat", room="default", text="from json")
        with trio.fail_after(5):
            assert json.loads(await old.get_message()) == {
                "user": "new", "text": "from json",
                "timestamp": node.node.hub.history("default")[-1].timestamp}
        await old.send_message("from plain")
        assert (await new.push("message"))["text"] == "from plain"


async def test_kv_over_websocket(node: RunningNode) -> None:
    async with json_client(node) as c:
        missing = await c.request("kv.get", key="k")
        assert missing["found"] is False and missing["value"] is None
        put = await c.request("kv.put", key="k", value={"n": [1, 2]})
        assert put["op"] == "kv.put" and put["node"] == node.node.name
        got = await c.request("kv.get", key="k")
        assert got["found"] is True and got["value"] == {"n": [1, 2]} and got["from_node"] == node.node.name
        deleted = await c.request("kv.delete", key="k")
        assert deleted["deleted"] is True
        assert (await c.request("kv.delete", key="k"))["deleted"] is False
        assert (await c.request("kv.get", key="k"))["found"] is False


async def test_batched_frames_arrive_in_order(node: RunningNode) -> None:
    async with json_client(node, "reader") as reader, json_client(node, "writer") as writer:
        await reader.request("join", room="fast")
        await writer.request("join", room="fast")
        for i in range(200):
            await writer.ws.send_message(json.dumps({"type": "chat", "room": "fast", "text": str(i)}))
        texts = [(await reader.push("message"))["text"] for _ in range(200)]
        assert texts == [str(i) for i in range(200)]


# -- bad input ---------------------------------------------------------------

@pytest.mark.parametrize(("frame", "code", "needle"), [
    ("{not json", "bad_json", "malformed JSON"),
    ("[1, 2]", "bad_request", "JSON object"),
    ('{"room": "x"}', "bad_request", "type"),
    ('{"type": 5}', "bad_request", "type"),
    ('{"type": "dance"}', "unknown_type", "unknown message type 'dance'"),
    ('{"type": "ping", "ref": {"a": 1}}', "bad_request", "ref"),
])
async def test_malformed_requests_get_error_frames(node: RunningNode, frame: str, code: str,
                                                   needle: str) -> None:
    async with json_client(node) as c:
        await c.ws.send_message(frame)
        error = await c.next_frame()
        assert error["type"] == "error" and error["code"] == code
        assert needle in error["message"]
        assert (await c.request("ping"))["type"] == "pong"  # the connection lives on


@pytest.mark.parametrize(("kind", "fields", "needle"), [
    ("join", {}, "room: is required"),
    ("join", {"room": 3}, "room: must be a string"),
    ("join", {"room": "has space"}, "room: must be 1-64"),
    ("chat", {"room": "never-joined", "text": "x"}, "not a member"),
    ("chat", {"room": "r"}, "text: is required"),
    ("chat", {"room": "r", "text": ["x"]}, "text: must be a string"),
    ("leave", {"room": "r"}, "not a member"),
    ("kv.get", {}, "key: is required"),
    ("kv.get", {"key": ""}, "key: can't be blank"),
    ("kv.put", {"key": "k"}, "value: is required"),
    ("kv.put", {"key": "k" * 257, "value": 1}, "256 bytes"),
    ("kv.put", {"key": "a\x00", "value": 1}, "control characters"),
    ("kv.put", {"key": "k", "value": "x" * 70000}, "value: must be at most 65536 bytes"),
    ("kv.delete", {"key": 1}, "key: must be a string"),
])
async def test_invalid_fields_are_named(node: RunningNode, kind: str, fields: dict[str, object],
                                        needle: str) -> None:
    async with json_client(node) as c:
        reply = await c.request(kind, **fields)
        assert reply["type"] == "error" and reply["op"] == kind and reply["ref"]
        assert needle in reply["message"], reply
    assert node.node.store.entry("k") is None and len(node.node.store) == 0
    assert node.node.hub.history("r") == []


async def test_chat_text_over_limit(node: RunningNode) -> None:
    async with json_client(node) as c:
        await c.request("join", room="r")
        reply = await c.request("chat", room="r", text="z" * 20000)
        assert reply["code"] == "too_large" and "16384" in reply["message"]
    assert node.node.hub.history("r") == []


async def test_room_limit_per_connection(node: RunningNode) -> None:
    limit = node.node.settings.max_rooms_per_connection
    async with json_client(node) as c:
        for i in range(limit):
            assert (await c.request("join", room=f"r{i}"))["type"] == "ok"
        reply = await c.request("join", room="one-too-many")
        assert reply["type"] == "error" and str(limit) in reply["message"]


async def test_oversized_json_message_closes_1009(node: RunningNode) -> None:
    async with json_client(node) as c:
        await c.ws.send_message(json.dumps({"type": "chat", "room": "r", "text": "x" * 200_000}))
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
            await c.ws.get_message()
        assert close_reason(info.value)[0] == 1009


async def test_websocket_on_another_path_is_404(node: RunningNode) -> None:
    from trio_websocket import ConnectionRejected
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(node.url.replace("http", "ws") + "/nope"):
            pass
    assert info.value.status_code == 404


# -- issue 11: refs on refused frames, documented reply shapes, blank chat ----------

@pytest.mark.parametrize(("frame", "ref", "code"), [
    ('{"ref": 7}', 7, "bad_request"),
    ('{"ref": "no-type", "room": "x"}', "no-type", "bad_request"),
    ('{"type": 5, "ref": 1.5}', 1.5, "bad_request"),
    ('{"type": "dance", "ref": "d"}', "d", "unknown_type"),
])
async def test_a_frame_refused_before_its_handler_still_echoes_its_ref(
        node: RunningNode, frame: str, ref: object, code: str) -> None:
    async with json_client(node) as c:
        await c.ws.send_message(frame)
        error = await c.next_frame()
        assert error["type"] == "error" and error["code"] == code, error
        assert error["ref"] == ref, error
        assert "op" not in error  # no known operation to name


@pytest.mark.parametrize("frame", ['{"ref": {"a": 1}}', '{"type": "ping", "ref": NaN}'])
async def test_an_invalid_ref_is_not_echoed(node: RunningNode, frame: str) -> None:
    async with json_client(node) as c:
        await c.ws.send_message(frame)
        error = await c.next_frame()
        assert error["code"] == "bad_request" and "ref" in error["message"] and "ref" not in error


_META = {"type", "op", "ref", "trace_id"}


async def test_kv_replies_have_exactly_the_documented_fields(node: RunningNode) -> None:
    # docs/protocols.md, JSON (`webserver.v1`): kv.get -> key, found, value (null when
    # absent), from_node, version; kv.delete -> key, deleted.
    async with json_client(node) as c:
        missing = await c.request("kv.get", key="k")
        assert set(missing) - _META == {"key", "found", "value", "from_node", "version"}, missing
        assert (missing["op"], missing["key"], missing["found"], missing["value"], missing["version"]) == \
            ("kv.get", "k", False, None, None)
        assert missing["from_node"] == node.node.name
        await c.request("kv.put", key="k", value=1)
        found = await c.request("kv.get", key="k")
        assert set(found) - _META == {"key", "found", "value", "from_node", "version"}, found
        for key in ("k", "never-there"):
            deleted = await c.request("kv.delete", key=key)
            assert set(deleted) - _META == {"key", "deleted"}, deleted
            assert (deleted["op"], deleted["key"], deleted["deleted"]) == ("kv.delete", key, key == "k")


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_blank_chat_text_is_an_error_reply(node: RunningNode, text: str) -> None:
    async with json_client(node, "alice") as alice, json_client(node, "bob") as bob:
        await alice.request("join", room="r")
        await bob.request("join", room="r")
        reply = await alice.request("chat", room="r", text=text)
        assert reply["type"] == "error" and reply["op"] == "chat" and reply["code"] == "bad_request"
        assert reply["message"] == "text: can't be blank"
        await alice.request("chat", room="r", text="after")
        assert (await bob.push("message"))["text"] == "after"  # the blank one never went out
    assert [m.text for m in node.node.hub.history("r")] == ["after"]
