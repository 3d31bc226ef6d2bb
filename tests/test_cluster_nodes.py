"""Three real nodes in one trio.run, linked over real loopback TCP: membership,
replicated KV, cluster-wide chat and traces that cross nodes (each node has its
own in-memory exporter, so a span's node is the exporter it landed in)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from tests.engine_nodes import EngineNode
from tests.harness import json_client, start_node

SECRET = "test-cluster-secret-0123456789abcdef"


class Member(EngineNode):
    """A node of the three below, with the parent/child lookups these tests need."""

    def children(self, name: str, parent: ReadableSpan) -> list[ReadableSpan]:
        assert parent.context is not None
        return [s for s in self.spans(name) if s.parent and s.parent.span_id == parent.context.span_id]


async def wait_for(predicate: Callable[[], Any], timeout: float = 10, what: str = "") -> Any:
    with trio.fail_after(timeout):
        while not (result := predicate()):
            await trio.sleep(0.02)
    return result


async def wait_async(check: Callable[[], Any], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.05)


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> AsyncIterator[list[Member]]:
    fast = {"cluster_bind": "127.0.0.1:0", "cluster_secret": SECRET, "heartbeat_interval": "0.2",
            "failure_timeout": "1.0", "cluster_request_timeout": "2.0"}
    members: list[Member] = []
    first = None
    for i in range(3):
        exporter = InMemorySpanExporter()
        extra = {"node_name": f"n{i + 1}"}
        if first is not None:
            extra["peers"] = first
        running = await start_node(nursery, exporter, **fast, **extra)
        assert running.node.mesh is not None
        first = first or running.node.mesh.address
        members.append(Member(running, exporter, httpx.AsyncClient(base_url=running.url, timeout=10)))
    names = sorted(m.name for m in members)
    for m in members:
        await wait_for(lambda m=m: sorted(m.running.node.live_members()) == names)  # type: ignore[misc]
    yield members
    for m in members:
        await m.http.aclose()
        m.running.stop()


async def test_every_node_lists_every_member_self_first(cluster: list[Member]) -> None:
    for m in cluster:
        r = await m.http.get("/nodes")
        assert r.status_code == 200
        nodes = r.json()["nodes"]
        assert nodes[0] == m.name and sorted(nodes) == ["n1", "n2", "n3"]
        detail = (await m.http.get("/nodes?detail=1")).json()["members"]
        assert [d["status"] for d in detail] == ["up"] * 3
        assert all(d["cluster_address"] and d["http_url"] for d in detail)
        scrape = {f.name: f for f in text_string_to_metric_families((await m.http.get("/metrics")).text)}
        members = {s.labels["status"]: s.value for s in scrape["webserver_cluster_members"].samples}
        assert members == {"up": 3.0, "down": 0.0}
        heartbeats = [s for s in scrape["webserver_cluster_link_messages"].samples
                      if s.labels.get("message_type") == "heartbeat" and s.name.endswith("_total")]
        assert {s.labels["direction"] for s in heartbeats} == {"in", "out"}


async def test_a_write_on_one_node_is_read_on_every_node(cluster: list[Member]) -> None:
    n1, n2, n3 = cluster
    r = await n1.http.put("/kv/colour", json={"shade": "teal"})
    assert r.status_code == 200, r.text
    for m in cluster:
        got = await m.http.get("/kv/colour")
        assert got.status_code == 200
        assert got.json()["value"] == {"shade": "teal"}
        assert got.json()["from_node"] in {"n1", "n2", "n3"}
    assert (await n3.http.delete("/kv/colour")).status_code == 200
    for m in cluster:
        assert (await m.http.get("/kv/colour")).status_code == 404
    assert (await n2.http.delete("/kv/colour")).status_code == 404


async def test_replica_spans_are_children_of_the_coordinators_span(cluster: list[Member]) -> None:
    n1, n2, n3 = cluster
    assert (await n1.http.post("/kv", json={"key": "traced", "value": "v"})).status_code == 200
    coordinator = n1.spans("kv.put", **{"kv.key": "traced"})
    assert len(coordinator) == 1
    put = coordinator[0]
    assert put.kind is SpanKind.CLIENT and put.attributes is not None
    assert put.attributes["kv.node"] == "n1" and put.attributes["kv.replicas"] == 3
    assert put.attributes["kv.acks"] in (2, 3)  # returns at the write quorum
    for peer in (n2, n3):
        remote = await wait_for(lambda peer=peer: peer.spans("kv.put", **{"kv.key": "traced"}))  # type: ignore[misc]
        assert remote[0].kind is SpanKind.SERVER
        assert remote[0].attributes is not None and remote[0].attributes["kv.node"] == peer.name
        assert remote[0].context is not None and put.context is not None
        assert remote[0].context.trace_id == put.context.trace_id
        assert remote[0].parent is not None and remote[0].parent.span_id == put.context.span_id
        assert remote[0].parent.is_remote


async def test_chat_reaches_members_on_every_node_once_and_in_order(cluster: list[Member]) -> None:
    n1, n2, n3 = cluster
    async with json_client(n1.running, "alice") as alice, json_client(n2.running, "bob") as bob, \
            json_client(n3.running, "carol") as carol:
        for client in (alice, bob, carol):
            assert (await client.request("join", room="lobby"))["type"] == "ok"
        # Presence crosses nodes: alice hears bob and carol join.
        seen: set[tuple[str, str]] = set()
        while seen != {("bob", "n2"), ("carol", "n3")}:
            p = await alice.push("presence")
            seen.add((p["user"], p["node"]))
        await wait_for(lambda: len(n1.running.node.hub.bus.remote_targets("lobby")) == 2)  # type: ignore[union-attr]
        for i in range(5):
            await alice.request("chat", room="lobby", text=f"m{i}")
        for client in (bob, carol):
            got = [(await client.push("message"))["text"] for _ in range(5)]
            assert got == [f"m{i}" for i in range(5)]
        with trio.move_on_after(0.5):
            extra = await bob.push("message", timeout=1)
            pytest.fail(f"a message arrived twice: {extra}")
        room = (await n3.http.get("/rooms/lobby")).json()
        assert sorted((m["user"], m["node"]) for m in room["members"]) == [
            ("alice", "n1"), ("bob", "n2"), ("carol", "n3")]

    broadcasts = n1.spans("chat.broadcast", **{"chat.room": "lobby"})
    assert broadcasts and broadcasts[-1].kind is SpanKind.PRODUCER
    assert broadcasts[-1].attributes is not None and broadcasts[-1].attributes["chat.recipients"] == 2
    origin = broadcasts[-1]
    for peer in (n2, n3):
        deliveries = await wait_for(lambda peer=peer: peer.children("chat.broadcast", origin))  # type: ignore[misc]
        d = deliveries[0]
        assert d.kind is SpanKind.CONSUMER and d.attributes is not None
        assert d.attributes["chat.recipients"] == 1 and d.attributes["chat.origin_node"] == "n1"


async def test_a_member_joining_elsewhere_gets_the_rooms_history(cluster: list[Member]) -> None:
    n1, n2, n3 = cluster
    async with json_client(n1.running, "alice") as alice:
        await alice.request("join", room="archive")
        for i in range(3):
            await alice.request("chat", room="archive", text=f"h{i}")
        await wait_for(lambda: "archive" in n2.running.node.hub.bus.remote_rooms())  # type: ignore[union-attr]
        async with json_client(n2.running, "bob") as bob:
            joined = await bob.request("join", room="archive")
            assert [m["text"] for m in joined["history"]] == ["h0", "h1", "h2"]

            # A node with no member in the room still shows it whole.
            async def both_listed() -> bool:
                room = (await n3.http.get("/rooms/archive")).json()
                return bool(room["members"] == [{"user": "alice", "node": "n1"},
                                                {"user": "bob", "node": "n2"}])

            await wait_async(both_listed)
            room = (await n3.http.get("/rooms/archive")).json()
            assert [m["text"] for m in room["history"]] == ["h0", "h1", "h2"]
        assert (await n3.http.get("/rooms/nowhere")).status_code == 404


async def test_a_node_with_the_wrong_secret_never_joins(cluster: list[Member], nursery: trio.Nursery) -> None:
    n1 = cluster[0]
    assert n1.running.node.mesh is not None
    intruder = await start_node(nursery, InMemorySpanExporter(), node_name="intruder",
                                cluster_bind="127.0.0.1:0", cluster_secret="x" * 40,
                                peers=n1.running.node.mesh.address, heartbeat_interval="0.2",
                                failure_timeout="1.0")
    await trio.sleep(1.5)
    for m in cluster:
        assert "intruder" not in json.dumps((await m.http.get("/nodes?detail=1")).json())
    assert intruder.node.live_members() == ["intruder"]
    intruder.stop()
