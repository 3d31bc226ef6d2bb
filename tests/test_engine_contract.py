"""One behavioural contract, every engine: KV, chat, presence, history, membership and
traces, through the real HTTP and WebSocket front ends of real nodes.

An engine is only swappable if clients cannot tell which one a node runs, so each
test here runs unchanged on memory (one node: its members share it), mesh (three
nodes), valkey (three nodes on one Valkey) and valkey-cluster (three nodes on a
3-primary Valkey Cluster). What only one engine does lives in its own tests.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from trio_websocket import open_websocket_url

from server.engine.valkey_process import ValkeyCluster, ValkeyProcess
from tests.engine_nodes import EngineNode, start_engine_nodes, stop_engine_nodes, wait_until
from tests.harness import JsonClient, json_client, ws_url

ENGINES = ["memory", "mesh", "valkey", "valkey-cluster"]
NODES = 3
HISTORY_SIZE = 50  # the history_size default


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> tuple[str, dict[str, str]]:
    """(engine kind, settings): resolved here, synchronously, so the Valkey fixtures
    are only started for the params that need them."""
    param: str = request.param
    if param == "valkey":
        server: ValkeyProcess = request.getfixturevalue("valkey_server")
        return "valkey", {"valkey_url": f"{server.url}/0"}
    if param == "valkey-cluster":
        cluster: ValkeyCluster = request.getfixturevalue("valkey_cluster")
        return "valkey", {"valkey_url": ",".join(cluster.urls), "valkey_mode": "cluster"}
    return param, {}


@pytest.fixture
async def nodes(nursery: trio.Nursery, engine: tuple[str, dict[str, str]]) -> AsyncIterator[list[EngineNode]]:
    kind, overrides = engine
    started = await start_engine_nodes(nursery, kind, NODES, **overrides)
    yield started
    await stop_engine_nodes(started)


def seats(nodes: list[EngineNode]) -> list[EngineNode]:
    """Where a room's members sit: one per node, or two on a single node."""
    return nodes if len(nodes) > 1 else [nodes[0], nodes[0]]


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 10) -> None:
    """Poll an async check that becomes true eventually; fail naming it after timeout."""
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"waited {timeout:g}s for {what}")


async def members_are(node: EngineNode, room: str, expected: set[tuple[str, str]]) -> bool:
    """GET /rooms/<room> on node lists exactly these (user, node) members."""
    r = await node.http.get(f"/rooms/{room}")
    return r.status_code == 200 and {(m["user"], m["node"]) for m in r.json()["members"]} == expected


async def history_is(node: EngineNode, room: str, texts: list[str]) -> bool:
    """GET /rooms/<room> on node shows exactly this history, oldest first."""
    r = await node.http.get(f"/rooms/{room}")
    return r.status_code == 200 and [m["text"] for m in r.json()["history"]] == texts


async def rooms_known(node: EngineNode, rooms: set[str]) -> bool:
    """GET /rooms on node counts members in every one of rooms (no history fetched)."""
    listed = (await node.http.get("/rooms")).json()["rooms"]
    return rooms <= {r["room"] for r in listed if r["members"] > 0}


def attribute_values(span: ReadableSpan) -> list[str]:
    """Every attribute value of a span and its events, as text."""
    found = [dict(span.attributes or {})] + [dict(e.attributes or {}) for e in span.events]
    return [str(v) for attributes in found for v in attributes.values()]


async def test_kv_round_trips_through_http_on_every_node(nodes: list[EngineNode]) -> None:
    """Any node answers for any key, values come back exactly, and never leak into spans."""
    names = {n.name for n in nodes}
    secret = f"secret-{uuid.uuid4().hex}"
    with trio.fail_after(20):
        writer = nodes[-1]
        r = await writer.http.post("/kv", json={"key": "greeting", "value": secret})
        assert r.status_code == 200, r.text
        put = r.json()
        assert put["status"] == "ok" and put["node"] == writer.name and isinstance(put["version"], dict)
        for n in nodes:
            got = await n.http.get("/kv/greeting")
            assert got.status_code == 200, got.text
            body = got.json()
            assert body["value"] == secret and body["version"] == put["version"]
            assert body["from_node"] in names
            if n.running.node.engine.kind != "mesh":  # no replicas: the serving node answers
                assert body["from_node"] == n.name

        values: list[Any] = [{"secret": secret, "nested": {"list": [1, 2.5, None, True], "s": "é"}},
                             [1, "two", {"three": 3.0}, [secret]], 42, -3.25, "plain", False]
        for i, value in enumerate(values):
            r = await nodes[i % len(nodes)].http.put("/kv/any", json=value)
            assert r.status_code == 200, r.text
            for n in nodes:
                got = (await n.http.get("/kv/any")).json()["value"]
                assert json.dumps(got) == json.dumps(value), (n.name, got)

        assert (await nodes[0].http.delete("/kv/any")).status_code == 200
        for n in nodes:
            missing = await n.http.get("/kv/any")
            assert (missing.status_code, missing.json()) == (404, {"error": "not found"})
        assert (await nodes[-1].http.delete("/kv/any")).status_code == 404
        assert (await nodes[0].http.delete("/kv/never-written")).status_code == 404

        for bad in ({"value": "no key"}, {"key": "k"}, {"key": "k", "value": ["not", "a", "string"]}):
            r = await nodes[0].http.post("/kv", json=bad)
            assert r.status_code == 400 and "errors" in r.json(), r.text
        r = await nodes[0].http.post("/kv", content=b"{not json",
                                     headers={"content-type": "application/json"})
        assert r.status_code == 400 and "body" in r.json()["errors"]

        await wait_until(lambda: writer.spans("POST /kv"), 5, "the writer's POST /kv span")
    leaks = [(n.name, s.name) for n in nodes for s in n.spans()
             if any(secret in v for v in attribute_values(s))]
    assert not leaks, f"a value appeared in span attributes: {leaks}"


async def test_concurrent_writes_to_a_key_settle_on_one_written_value(nodes: list[EngineNode]) -> None:
    """Racing writers from every node all succeed, and every node then agrees."""
    keys = [f"race-{i}" for i in range(10)]
    statuses: list[int] = []

    async def write(node: EngineNode, key: str, value: str) -> None:
        statuses.append((await node.http.put(f"/kv/{key}", json=value)).status_code)

    with trio.fail_after(25):
        async with trio.open_nursery() as writers:
            for key in keys:
                for j in range(12):
                    writers.start_soon(write, nodes[j % len(nodes)], key, f"{key}/{j}")
        assert statuses == [200] * 120

        async def settled(key: str) -> bool:
            seen = [(await n.http.get(f"/kv/{key}")).json().get("value") for n in nodes]
            return len(set(seen)) == 1 and seen[0] in {f"{key}/{j}" for j in range(12)}

        for key in keys:
            await eventually(lambda key=key: settled(key), f"every node to read one written {key}")  # type: ignore[misc]


async def test_chat_reaches_every_other_member_once_in_order(nodes: list[EngineNode]) -> None:
    """Members on every node hear each message once, in send order; the sender never does."""
    places = seats(nodes)
    expected = {(f"u{i}", n.name) for i, n in enumerate(places)}
    with trio.fail_after(20):
        async with AsyncExitStack() as stack:
            clients: list[JsonClient] = [await stack.enter_async_context(json_client(n.running, f"u{i}"))
                                         for i, n in enumerate(places)]
            sender, others = clients[0], clients[1:]
            assert (await sender.request("join", room="lobby"))["type"] == "ok"
            for client in others:
                assert (await client.request("join", room="lobby"))["type"] == "ok"
            # Presence crosses nodes: the sender hears every other member join, with its node.
            heard: set[tuple[str, str]] = set()
            while len(heard) < len(others):
                p = await sender.push("presence")
                assert p["event"] == "join" and p["room"] == "lobby"
                heard.add((p["user"], p["node"]))
            assert heard == expected - {("u0", places[0].name)}
            await eventually(lambda: members_are(nodes[0], "lobby", expected),
                             "node 1 to list the lobby's members on every node")

            texts = [f"m{i}" for i in range(20)] + ["end"]
            for text in texts:
                assert (await sender.request("chat", room="lobby", text=text))["type"] == "ok"
            for client in others:
                got: list[dict[str, Any]] = []
                while not got or got[-1]["text"] != "end":
                    got.append(await client.push("message"))
                assert [m["text"] for m in got] == texts  # in order, none twice
                assert {(m["user"], m["node"]) for m in got} == {("u0", places[0].name)}
            # Whatever the sender's node queued for it before now arrives before this reply.
            assert (await sender.request("ping"))["type"] != "error"
            assert not [f for f in sender.pending if f.get("type") == "message"], "the sender got an echo"


async def test_a_first_member_on_a_node_gets_the_rooms_history(nodes: list[EngineNode]) -> None:
    """A node that had nobody in a room still hands a joiner its last history_size
    messages, oldest first; plain-text clients get `default`'s history first thing."""
    origin, elsewhere = seats(nodes)[:2]
    witness = nodes[2] if len(nodes) > 2 else origin
    texts = [f"h{i}" for i in range(60)]
    with trio.fail_after(25):
        async with json_client(origin.running, "alice") as alice:
            await alice.request("join", room="archive")
            await alice.request("join", room="default")
            for text in texts:
                await alice.request("chat", room="archive", text=text)
            for text in ("p0", "p1", "p2"):
                await alice.request("chat", room="default", text=text)
            last = texts[-HISTORY_SIZE:]
            # Ready when a third node can show the history (mesh: asking origin; valkey:
            # the server) and elsewhere knows the rooms, without warming elsewhere's copy.
            await eventually(lambda: history_is(witness, "archive", last), "archive's history")
            await eventually(lambda: history_is(witness, "default", ["p0", "p1", "p2"]),
                             "default's history")
            await eventually(lambda: rooms_known(elsewhere, {"archive", "default"}),
                             "elsewhere to know both rooms")

            async with json_client(elsewhere.running, "bob") as bob:
                joined = await bob.request("join", room="archive")
                assert [m["text"] for m in joined["history"]] == last
                assert {(m["type"], m["user"], m["node"]) for m in joined["history"]} == {
                    ("message", "alice", origin.name)}

            async with open_websocket_url(ws_url(elsewhere.running, "username=carol")) as plain:
                first = [json.loads(await plain.get_message()) for _ in range(3)]
            assert [(m["user"], m["text"]) for m in first] == [("alice", f"p{i}") for i in range(3)]
            assert all(set(m) == {"user", "text", "timestamp"} for m in first)


async def test_every_node_lists_every_member_self_first(nodes: list[EngineNode]) -> None:
    """GET /nodes is the same membership from every node, each naming itself first."""
    names = sorted(n.name for n in nodes)
    with trio.fail_after(10):
        for n in nodes:
            listed = (await n.http.get("/nodes")).json()
            assert listed["nodes"][0] == n.name and sorted(listed["nodes"]) == names
            detail = (await n.http.get("/nodes?detail=1")).json()["members"]
            assert sorted(m["name"] for m in detail) == names and detail[0]["name"] == n.name
            assert [m["status"] for m in detail] == ["up"] * len(names)


async def test_a_chat_message_and_a_write_keep_their_trace(nodes: list[EngineNode]) -> None:
    """A message's delivery on the receiving node joins the sender's trace, and a
    write's kv.put span is a child of its HTTP request's span."""
    origin, receiver = seats(nodes)[:2]
    with trio.fail_after(20):
        async with json_client(origin.running, "alice") as alice, \
                json_client(receiver.running, "bob") as bob:
            await alice.request("join", room="traced")
            await bob.request("join", room="traced")
            await eventually(lambda: members_are(origin, "traced",
                                                  {("alice", origin.name), ("bob", receiver.name)}),
                             "alice's node to see bob")
            await alice.request("chat", room="traced", text="hello")
            message = await bob.push("message")
        sent = await wait_until(
            lambda: origin.spans("websocket.message", **{"websocket.message_type": "chat"}),
            5, "the sender's websocket.message span")
        assert len(sent) == 1 and sent[0].context is not None
        trace_id = sent[0].context.trace_id
        assert message.get("trace_id") == format(trace_id, "032x")
        await wait_until(lambda: [s for s in receiver.spans("chat.broadcast", **{"chat.room": "traced"})
                                  if s.context is not None and s.context.trace_id == trace_id],
                         5, "a chat.broadcast span in the sender's trace on the receiving node")

        assert (await origin.http.post("/kv", json={"key": "traced", "value": "v"})).status_code == 200
        [request] = await wait_until(lambda: origin.spans("POST /kv"), 5, "the POST /kv span")
        [put] = origin.spans("kv.put", **{"kv.key": "traced"})
    assert request.context is not None and put.parent is not None
    assert put.parent.span_id == request.context.span_id
    assert put.context is not None and put.context.trace_id == request.context.trace_id
