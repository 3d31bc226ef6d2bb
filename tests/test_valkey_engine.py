"""The valkey engine against real servers it cannot control: a Valkey that is not
there yet, one restarted mid-traffic, one reached through Sentinel, and Redis 7.

Each test starts its own server (server/engine/valkey_process.py) on a free
loopback port, and real nodes (Hypercorn on port 0) inside the test's trio.run.
The behaviour-by-engine contract (KV, chat, history, membership, traces) is
tests/test_engine_contract.py; this file is what only a server process can show.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.engine.valkey_process import (
    ValkeyProcess,
    command,
    find_server_binary,
    start_sentinel,
    start_valkey,
)
from server.ports import free_port
from server.serve import RunningNode
from tests.harness import JsonClient, json_client, start_node, wait_for_spans

FAST = {"heartbeat_interval": "0.2", "failure_timeout": "1.0", "valkey_timeout": "0.5",
        "reconnect_max_backoff": "0.5"}
VALKEY_LOGGER = "server.engine.valkey.client"


@pytest.fixture
def valkey() -> Iterator[ValkeyProcess]:
    server = start_valkey(appendonly=True)
    yield server
    server.close()


async def valkey_node(nursery: trio.Nursery, url: str, name: str, prefix: str,
                      **overrides: Any) -> RunningNode:
    return await start_node(nursery, InMemorySpanExporter(), engine="valkey", valkey_url=url,
                            valkey_prefix=prefix, node_name=name, **{**FAST, **overrides})


async def until(check: Any, timeout: float, what: str) -> None:
    """Poll an async check until it returns true, failing after timeout."""
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what}: not within {timeout}s")


async def members_of(http: httpx.AsyncClient) -> list[str]:
    return list((await http.get("/nodes")).json()["nodes"])


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    yield f"t{uuid.uuid4().hex[:8]}"


async def test_a_node_serves_before_valkey_is_up_and_connects_when_it_comes(
        nursery: trio.Nursery, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=VALKEY_LOGGER)
    port = free_port()
    node = await valkey_node(nursery, f"redis://127.0.0.1:{port}/0", "lonely", prefix)
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http, \
            json_client(node, "alice") as alice, json_client(node, "bob") as bob:
        with trio.fail_after(10):
            # KV: a clear 503 at once, naming the engine and what failed.
            r = await http.post("/kv", json={"key": "k", "value": "v"})
            assert r.status_code == 503, r.text
            assert f"Valkey at 127.0.0.1:{port}" in r.json()["error"], r.text
            assert (await http.get("/kv/k")).status_code == 503
            # Chat on this node still works: both members are here.
            for client in (alice, bob):
                assert (await client.request("join", room="lobby"))["type"] == "ok"
            assert (await alice.request("chat", room="lobby", text="hi"))["type"] == "ok"
            assert (await bob.push("message"))["text"] == "hi"
            got = await bob.request("kv.get", key="k")
            assert (got["type"], got["code"]) == ("error", "engine_unavailable"), got
            assert await members_of(http) == ["lonely"]

        server = await trio.to_thread.run_sync(lambda: start_valkey(port=port))
        try:
            with trio.fail_after(15):
                async def written() -> bool:
                    return (await http.post("/kv", json={"key": "k", "value": "v"})).status_code == 200
                await until(written, 10, "the first write after Valkey came up")
                assert (await http.get("/kv/k")).json()["value"] == "v"
                # Members who joined while Valkey was away are in its presence hash now.
                async def restored() -> bool:
                    return command(server, "HLEN", f"{{{prefix}}}:presence:lonely") == ":2"
                await until(restored, 5, "presence written once connected")
            # Many failed calls and reconnection attempts, one warning; the recovery once.
            logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == VALKEY_LOGGER]
            assert [level for level, _ in logged] == [logging.WARNING, logging.INFO], logged
            assert "answers again" in logged[1][1], logged
        finally:
            server.close()


async def test_a_server_restart_mid_traffic_loses_no_acknowledged_write_and_chat_resumes(
        nursery: trio.Nursery, valkey: ValkeyProcess, prefix: str) -> None:
    n1 = await valkey_node(nursery, valkey.url, "n1", prefix)
    n2 = await valkey_node(nursery, valkey.url, "n2", prefix)
    acked: dict[str, int] = {}
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=10) as http, json_client(n1, "alice") as alice, \
            json_client(n2, "bob") as bob:
        with trio.fail_after(40):
            await until(lambda: _both_see(http, n1, n2), 10, "membership")
            assert (await alice.request("join", room="r"))["type"] == "ok"
            assert (await bob.request("join", room="r"))["type"] == "ok"
            await until(lambda: _remote_members(http, n1, "r", 1), 5, "bob visible on n1")

            async def writer() -> None:
                for i in range(400):
                    node = (n1, n2)[i % 2]
                    r = await http.put(f"{node.url}/kv/key{i % 40}", json=i)
                    statuses.append(r.status_code)
                    if r.status_code == 200:
                        acked[f"key{i % 40}"] = i
                    await trio.sleep(0.01)

            async with trio.open_nursery() as traffic:
                traffic.start_soon(writer)
                await trio.sleep(0.8)
                await trio.to_thread.run_sync(valkey.restart)  # SIGTERM: the AOF is flushed
            # Every answer was 200 or a clear 503, never a hang or a 500; some of each.
            assert set(statuses) <= {200, 503}, statuses
            assert statuses.count(200) > 100, statuses
            for key, value in acked.items():  # the last acknowledged write of each key survived
                r = await http.get(f"{n1.url}/kv/{key}")
                assert (r.status_code, r.json()["value"]) == (200, value), (key, r.text)
            # Chat across nodes comes back (the subscriptions are restored), exactly once.
            async def delivered() -> bool:
                await alice.request("chat", room="r", text="ping")
                with trio.move_on_after(0.5):
                    return bool((await bob.push("message", timeout=1))["text"] == "ping")
                return False
            await until(delivered, 15, "chat across nodes after the restart")
            await until(lambda: _both_see(http, n1, n2), 10, "membership after the restart")


async def test_a_node_finds_the_primary_through_sentinel(
        nursery: trio.Nursery, valkey: ValkeyProcess, prefix: str) -> None:
    sentinel = await trio.to_thread.run_sync(lambda: start_sentinel(valkey))
    try:
        node = await valkey_node(nursery, sentinel.url, "s1", prefix, valkey_mode="sentinel")
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            with trio.fail_after(15):
                async def written() -> bool:
                    return (await http.post("/kv", json={"key": "s", "value": "via"})).status_code == 200
                await until(written, 10, "a write through the sentinel's primary")
                assert (await http.get("/kv/s")).json()["value"] == "via"
        # It really went to the primary the sentinel named.
        assert '"via"' in command(valkey, "GET", f"{prefix}:kv:s")
    finally:
        sentinel.close()


@pytest.mark.skipif(shutil.which("redis-server") is None,
                    reason="no redis-server on PATH (.ci/install-system-deps installs Debian's)")
async def test_redis_7_serves_kv_and_chat_across_nodes(nursery: trio.Nursery, prefix: str) -> None:
    redis = await trio.to_thread.run_sync(lambda: start_valkey(binary=find_server_binary("redis-server")))
    try:
        n1 = await valkey_node(nursery, redis.url, "r1", prefix)
        n2 = await valkey_node(nursery, redis.url, "r2", prefix)
        async with httpx.AsyncClient(timeout=10) as http, json_client(n1, "alice") as alice, \
                json_client(n2, "bob") as bob:
            with trio.fail_after(20):
                await until(lambda: _both_see(http, n1, n2), 10, "membership")
                assert (await http.post(f"{n1.url}/kv", json={"key": "k", "value": "v"})).status_code == 200
                assert (await http.get(f"{n2.url}/kv/k")).json()["value"] == "v"
                await chat_once(alice, bob, http, n1)
    finally:
        redis.close()


async def chat_once(sender: JsonClient, receiver: JsonClient, http: httpx.AsyncClient,
                    sender_node: RunningNode) -> None:
    assert (await sender.request("join", room="x"))["type"] == "ok"
    assert (await receiver.request("join", room="x"))["type"] == "ok"
    await until(lambda: _remote_members(http, sender_node, "x", 1), 5, "the receiver visible")
    assert (await sender.request("chat", room="x", text="across"))["type"] == "ok"
    assert (await receiver.push("message"))["text"] == "across"


async def _both_see(http: httpx.AsyncClient, *nodes: RunningNode) -> bool:
    names = sorted(n.node.name for n in nodes)
    for node in nodes:
        if sorted((await http.get(f"{node.url}/nodes")).json()["nodes"]) != names:
            return False
    return True


async def _remote_members(http: httpx.AsyncClient, node: RunningNode, room: str, count: int) -> bool:
    r = await http.get(f"{node.url}/rooms/{room}")
    members = r.json().get("members", []) if r.status_code == 200 else []
    return sum(m["node"] != node.node.name for m in members) >= count  # type: ignore[no-any-return]


async def test_the_trace_viewer_assembles_a_chat_trace_from_both_nodes_over_http(
        nursery: trio.Nursery, valkey: ValkeyProcess, prefix: str) -> None:
    n1 = await valkey_node(nursery, valkey.url, "n1", prefix)
    n2 = await valkey_node(nursery, valkey.url, "n2", prefix)
    async with httpx.AsyncClient(timeout=10) as http, json_client(n1, "alice") as alice, \
            json_client(n2, "bob") as bob:
        with trio.fail_after(20):
            await until(lambda: _both_see(http, n1, n2), 10, "membership")
            await chat_once(alice, bob, http, n1)
            sent = await alice.request("chat", room="x", text="traced")
            assert (await bob.push("message"))["text"] == "traced"
            trace_id = sent["trace_id"]

            async def assembled() -> bool:
                r = await http.get(f"{n1.url}/debug/traces/api/traces/{trace_id}")
                body = r.json()
                nodes = {s.get("node") for s in body.get("spans", [])}
                return r.status_code == 200 and nodes == {"n1", "n2"} and not body["partial"]
            await until(assembled, 5, "spans of both nodes in one trace")
            body = (await http.get(f"{n1.url}/debug/traces/api/traces/{trace_id}")).json()
            names = {(s["node"], s["name"]) for s in body["spans"]}
            assert {("n1", "chat.broadcast"), ("n1", "PIPELINE"), ("n2", "chat.broadcast")} <= names, names


async def test_other_nodes_see_the_advertised_url(
        nursery: trio.Nursery, valkey: ValkeyProcess, prefix: str) -> None:
    n1 = await valkey_node(nursery, valkey.url, "n1", prefix)
    await valkey_node(nursery, valkey.url, "n2", prefix, advertise_url="http://n2.example:4000")
    async with httpx.AsyncClient(timeout=10) as http:
        async def advertised() -> bool:
            members = (await http.get(f"{n1.url}/nodes?detail=1")).json()["members"]
            return {m["name"]: m["http_url"] for m in members}.get("n2") == "http://n2.example:4000"
        await until(advertised, 10, "n2's advertised URL on n1")


async def test_engine_calls_are_client_spans_under_the_kv_span_with_database_attributes(
        nursery: trio.Nursery, valkey: ValkeyProcess, prefix: str) -> None:
    exporter = InMemorySpanExporter()
    node = await start_node(nursery, exporter, engine="valkey", valkey_url=valkey.url,
                            valkey_prefix=prefix, node_name="d1", **FAST)
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        with trio.fail_after(10):
            async def written() -> bool:
                return (await http.put("/kv/secret-key", json="secret-value")).status_code == 200
            await until(written, 5, "a write")
            assert (await http.get("/kv/secret-key")).status_code == 200
            await wait_for_spans(exporter, "GET /kv/{key}")  # it ends once the answer is sent
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    gets = [s for s in spans if s.name == "GET" and s.kind.name == "CLIENT"]
    assert len(gets) == 1, [s.name for s in spans]
    get = gets[0]
    attributes = dict(get.attributes or {})
    assert attributes["db.system.name"] == "valkey"
    assert attributes["db.operation.name"] == "GET"
    assert (attributes["server.address"], attributes["server.port"]) == ("127.0.0.1", valkey.port)
    assert attributes["db.namespace"] == "0"
    assert get.parent is not None
    kv_get = by_id[get.parent.span_id]
    assert kv_get.name == "kv.get" and kv_get.parent is not None
    assert by_id[kv_get.parent.span_id].name == "GET /kv/{key}"
    assert all("secret-value" not in str(v) for s in spans for v in (s.attributes or {}).values())
