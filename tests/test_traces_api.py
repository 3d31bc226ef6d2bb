"""`/debug/traces/api/...` over real HTTP: one node's buffer, bad parameters refused,
and traces and the trace list assembled from a real three-node cluster (mesh, and
valkey where a server binary is installed), partial when a member is down or gone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.serve import RunningNode
from tests.harness import json_client, start_node

SECRET = "test-cluster-secret-0123456789abcdef"
LIST = "/debug/traces/api/traces"


async def wait_for(predicate: Callable[[], Any], timeout: float = 10) -> Any:
    with trio.fail_after(timeout):
        while not (result := predicate()):
            await trio.sleep(0.02)
    return result


async def wait_http(check: Callable[[], Any], timeout: float = 10) -> Any:
    """Poll an async check until it returns something truthy."""
    with trio.fail_after(timeout):
        while not (result := await check()):
            await trio.sleep(0.05)
    return result


async def trace_of(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    """The newest trace summary whose spans include `name` (spans end just after the response)."""
    async def find() -> dict[str, Any] | None:
        r = await http.get(LIST, params={"name": name})
        assert r.status_code == 200, r.text
        traces: list[dict[str, Any]] = r.json()["traces"]
        return traces[0] if traces else None
    found: dict[str, Any] = await wait_http(find)
    return found


# -- one node ------------------------------------------------------------------

async def test_list_and_fetch_a_trace(http: httpx.AsyncClient, node: RunningNode) -> None:
    assert (await http.put("/kv/traced", json={"v": 1})).status_code == 200
    summary = await trace_of(http, "PUT /kv")
    assert summary["root_name"] == "PUT /kv/{key}"
    assert summary["nodes"] == [node.node.name] and summary["errors"] == 0
    assert summary["span_count"] >= 2 and summary["duration_ms"] >= 0
    listing = (await http.get(LIST)).json()
    assert listing["node"] == node.node.name and listing["enabled"] is True
    assert summary["trace_id"] in [t["trace_id"] for t in listing["traces"]]

    r = await http.get(f"{LIST}/{summary['trace_id']}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["trace_id"] == summary["trace_id"]
    assert body["nodes"] == [node.node.name]
    assert body["partial"] is False and body["missing"] == [] and body["truncated"] == []
    names = [s["name"] for s in body["spans"]]
    assert "PUT /kv/{key}" in names and "kv.put" in names
    server = next(s for s in body["spans"] if s["name"] == "PUT /kv/{key}")
    assert server["kind"] == "SERVER" and server["parent_span_id"] is None
    assert server["node"] == node.node.name
    assert server["attributes"]["http.route"] == "/kv/{key}"
    assert server["status"]["code"] in ("UNSET", "OK")
    put = next(s for s in body["spans"] if s["name"] == "kv.put")
    assert put["parent_span_id"] == server["span_id"]
    starts = [s["start_unix_nano"] for s in body["spans"]]
    assert starts == sorted(starts)


async def test_list_filters_and_limit(http: httpx.AsyncClient) -> None:
    for key in ("a", "b", "c"):
        assert (await http.put(f"/kv/{key}", json=1)).status_code == 200
    await wait_http(lambda: _count(http, {"name": "PUT"}, 3))
    assert len((await http.get(LIST, params={"name": "PUT", "limit": "2"})).json()["traces"]) == 2
    assert (await http.get(LIST, params={"min_ms": "100000"})).json()["traces"] == []
    assert (await http.get(LIST, params={"errors": "1"})).json()["traces"] == []


async def _count(http: httpx.AsyncClient, params: dict[str, str], at_least: int) -> bool:
    return len((await http.get(LIST, params=params)).json()["traces"]) >= at_least


@pytest.mark.parametrize("query", [
    "limit=0", "limit=x", "limit=5000", "limit=1.5", "min_ms=-1", "min_ms=fast", "min_ms=nan", "min_ms=inf",
    "errors=maybe", "errors=2", "include_polling=sometimes", "local=yes please", "name=" + "x" * 201,
    "limit=5&limit=6", "error=1", "nme=PUT"])
async def test_bad_list_query_is_400_saying_what_was_wrong(http: httpx.AsyncClient, query: str) -> None:
    r = await http.get(f"{LIST}?{query}")
    assert r.status_code == 400, (query, r.text)
    error = r.json()["error"]
    assert error.startswith(query.split("=")[0] + ":"), error  # names the parameter first
    if query == "errors=maybe":
        assert error == "errors: expected 1 or 0 (true/false, yes/no, on/off), got 'maybe'"
    if query == "nme=PUT":
        assert "unknown parameter" in error and "name" in error


@pytest.mark.parametrize("query", ["errors=", "errors=0", "errors=off", "errors=TRUE", "local=1",
                                   "limit=1000", "min_ms=0.5", "include_polling=yes", "name=%20PUT%20"])
async def test_good_list_queries_are_accepted(http: httpx.AsyncClient, query: str) -> None:
    r = await http.get(f"{LIST}?{query}")
    assert r.status_code == 200, (query, r.text)


async def test_bad_trace_query_is_400(http: httpx.AsyncClient) -> None:
    for query in ("local=maybe", "locl=1", "local=1&local=0"):
        r = await http.get(f"{LIST}/{'ab' * 16}?{query}")
        assert r.status_code == 400, (query, r.text)
        assert r.json()["error"].startswith(query.split("=")[0] + ":")


@pytest.mark.parametrize("bad", ["xyz", "0AF7651916CD43DD8448EB211C80319C", "0" * 32, "a" * 33])
async def test_bad_trace_id_is_400(http: httpx.AsyncClient, bad: str) -> None:
    r = await http.get(f"{LIST}/{bad}")
    assert r.status_code == 400
    assert "32 lowercase hex" in r.json()["error"]


async def test_unknown_trace_is_404(http: httpx.AsyncClient) -> None:
    r = await http.get(f"{LIST}/{'ab' * 16}")
    assert r.status_code == 404
    assert r.json() == {"error": f"no spans of trace {'ab' * 16} on any node"}


async def test_buffer_off_with_zero(nursery: trio.Nursery) -> None:
    running = await start_node(nursery, InMemorySpanExporter(), trace_buffer_spans="0")
    try:
        assert running.node.span_buffer is None
        async with httpx.AsyncClient(base_url=running.url, timeout=10) as http:
            assert (await http.put("/kv/k", json=1)).status_code == 200
            listing = (await http.get(LIST)).json()
            assert listing == {"node": running.node.name, "scope": "cluster", "enabled": False,
                               "nodes": [running.node.name], "partial": False, "missing": [], "truncated": [],
                               "hidden_polling": 0, "traces": []}
            assert (await http.get(f"{LIST}/{'ab' * 16}")).status_code == 404
    finally:
        running.stop()


# -- three nodes ---------------------------------------------------------------

Members = list[tuple[RunningNode, httpx.AsyncClient]]


async def start_members(nursery: trio.Nursery, out: Members, **settings: str) -> None:
    """n1, n2, n3 of one mesh cluster, each with an HTTP client, appended to out."""
    fast = {"cluster_bind": "127.0.0.1:0", "cluster_secret": SECRET, "heartbeat_interval": "0.2",
            "failure_timeout": "1.0", "cluster_request_timeout": "2.0", **settings}
    first = None
    for i in range(3):
        extra = {"node_name": f"n{i + 1}"}
        if first is not None:
            extra["peers"] = first
        running = await start_node(nursery, InMemorySpanExporter(), **fast, **extra)
        assert running.node.mesh is not None
        first = first or running.node.mesh.address
        out.append((running, httpx.AsyncClient(base_url=running.url, timeout=10)))
    for running, _ in out:
        await wait_for(lambda r=running: sorted(r.node.live_members()) == ["n1", "n2", "n3"])  # type: ignore[misc]


async def stop_members(out: Members) -> None:
    for running, http in out:
        await http.aclose()
        running.stop()


@pytest.fixture
async def members(nursery: trio.Nursery) -> AsyncIterator[Members]:
    out: Members = []
    try:
        await start_members(nursery, out)
        yield out
    finally:
        await stop_members(out)


@pytest.fixture
async def forgetful_members(nursery: trio.Nursery) -> AsyncIterator[Members]:
    """As `members`, but a node down for half a second is removed from the cluster."""
    out: Members = []
    try:
        await start_members(nursery, out, member_removal_timeout="0.5")
        yield out
    finally:
        await stop_members(out)


async def test_a_trace_is_assembled_from_every_node_then_partial_when_one_is_down(
        members: list[tuple[RunningNode, httpx.AsyncClient]]) -> None:
    (n1, http1), _, (n3, _) = members
    assert (await http1.put("/kv/everywhere", json={"x": 1})).status_code == 200
    trace_id = (await trace_of(http1, "PUT /kv"))["trace_id"]
    url = f"{LIST}/{trace_id}"

    async def from_all_three() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http1.get(url)).json()
        return body if {s["node"] for s in body["spans"]} == {"n1", "n2", "n3"} else None
    body = await wait_http(from_all_three)
    assert sorted(body["nodes"]) == ["n1", "n2", "n3"] and body["nodes"][0] == "n1"
    assert body["partial"] is False and body["missing"] == []
    assert {s["trace_id"] for s in body["spans"]} == {trace_id}
    by_node = {name: [s for s in body["spans"] if s["node"] == name] for name in ("n1", "n2", "n3")}
    assert any(s["name"] == "PUT /kv/{key}" for s in by_node["n1"])
    ids = {s["span_id"] for s in body["spans"]}
    for name in ("n2", "n3"):  # the replicas' spans hang under spans of the trace
        assert all(s["parent_span_id"] in ids for s in by_node[name]), by_node[name]
    local = (await http1.get(url, params={"local": "1"})).json()
    assert local["nodes"] == ["n1"] and {s["node"] for s in local["spans"]} == {"n1"}
    assert local["partial"] is False

    n3.stop()
    mesh = n1.node.mesh
    assert mesh is not None
    await wait_for(lambda: "n3" not in mesh.up_peers())
    r = await http1.get(url)
    assert r.status_code == 200, r.text
    partial = r.json()
    assert partial["partial"] is True
    assert [m["node"] for m in partial["missing"]] == ["n3"] and partial["missing"][0]["reason"]
    assert sorted(partial["nodes"]) == ["n1", "n2"]
    assert {s["node"] for s in partial["spans"]} == {"n1", "n2"}
    assert len(partial["spans"]) >= len(by_node["n1"]) + len(by_node["n2"])
    # A peer asked for an unknown trace answers with nothing; n3 is still listed missing.
    unknown = await http1.get(f"{LIST}/{'cd' * 16}")
    assert unknown.status_code == 404
    assert [m["node"] for m in unknown.json()["missing"]] == ["n3"]


async def listing(http: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    r = await http.get(LIST, params=params)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_the_list_is_cluster_wide_with_each_trace_once_under_its_root(members: Members) -> None:
    (n1, http1), (_, http2), (n3, _) = members
    assert (await http1.put("/kv/listed", json={"x": 1})).status_code == 200
    trace_id = (await trace_of(http1, "PUT /kv"))["trace_id"]

    async def whole() -> dict[str, Any] | None:  # n2's list, once every replica has ended its span
        found = [t for t in (await listing(http2))["traces"] if t["trace_id"] == trace_id]
        return found[0] if found and found[0]["nodes"] == ["n1", "n2", "n3"] else None
    summary = await wait_http(whole)
    assert summary["root_name"] == "PUT /kv/{key}" and summary["root_node"] == "n1"
    spans = (await http1.get(f"{LIST}/{trace_id}")).json()["spans"]
    assert summary["span_count"] == len(spans)
    body = await listing(http2)
    assert body["scope"] == "cluster" and body["node"] == "n2" and body["nodes"] == ["n2", "n1", "n3"]
    assert body["partial"] is False and body["missing"] == []
    assert [t["trace_id"] for t in body["traces"]].count(trace_id) == 1  # the replicas are no roots
    # Filters see the whole trace: n2's list finds it by a span name of n1's alone.
    assert trace_id in [t["trace_id"] for t in (await listing(http2, name="PUT /kv"))["traces"]]
    # local=1: n2's own share, a replica without its root.
    local = await listing(http2, local="1")
    assert local["scope"] == "node" and local["nodes"] == ["n2"]
    (share,) = [t for t in local["traces"] if t["trace_id"] == trace_id]
    assert share["root_node"] is None and share["nodes"] == ["n2"] and share["root_name"] == "kv.put"

    n3.stop()
    mesh = n1.node.mesh
    assert mesh is not None
    await wait_for(lambda: "n3" not in mesh.up_peers())
    partial = await listing(http1)
    assert partial["partial"] is True and [m["node"] for m in partial["missing"]] == ["n3"]
    assert partial["nodes"] == ["n1", "n2"]
    (summary,) = [t for t in partial["traces"] if t["trace_id"] == trace_id]
    assert summary["nodes"] == ["n1", "n2"] and summary["root_node"] == "n1"


async def test_the_chat_pages_polling_is_left_out_of_the_list_unless_asked(members: Members) -> None:
    (_, http1), (_, http2), _ = members
    assert (await http2.get("/nodes", params={"detail": "1", "poll": "1"})).status_code == 200
    assert (await http2.get("/nodes")).status_code == 200  # not marked: someone else's request

    async def both() -> dict[str, Any] | None:
        body = await listing(http1, name="GET /nodes", include_polling="1")
        return body if len(body["traces"]) >= 2 else None
    everything = await wait_http(both)
    assert sorted(t["polling"] for t in everything["traces"]) == [False, True]
    default = await listing(http1, name="GET /nodes")
    assert [t["polling"] for t in default["traces"]] == [False]
    assert default["hidden_polling"] == 1


async def test_a_trace_whose_node_left_the_cluster_still_says_partial(forgetful_members: Members) -> None:
    """n3 held the trace's root; once it is gone from the membership nobody asks it, but
    the replicas' spans on n1 and n2 point at a parent that no node returned."""
    (n1, http1), _, (_, http3) = forgetful_members
    assert (await http3.put("/kv/orphaned", json=1)).status_code == 200
    trace_id = (await trace_of(http3, "PUT /kv"))["trace_id"]
    url = f"{LIST}/{trace_id}"

    async def complete() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http1.get(url)).json()
        return body if {s["node"] for s in body["spans"]} == {"n1", "n2", "n3"} else None
    body = await wait_http(complete)
    assert body["partial"] is False and body["orphans"] == []

    forgetful_members[2][0].stop()
    mesh = n1.node.mesh
    assert mesh is not None
    await wait_for(lambda: "n3" not in mesh.membership.placement_names())
    r = await http1.get(url)
    assert r.status_code == 200, r.text
    gone = r.json()
    assert gone["missing"] == [] and gone["nodes"] == ["n1", "n2"]  # n3 is no member: nobody to ask
    assert gone["partial"] is True
    assert {o["node"] for o in gone["orphans"]} == {"n1", "n2"}
    assert all(o["name"] == "kv.put" for o in gone["orphans"])


async def test_valkey_nodes_list_each_others_traces_over_http(nursery: trio.Nursery) -> None:
    """The valkey engine asks peers over HTTP (`/debug/traces/api/traces/recent?local=1`)."""
    from server.engine.valkey_process import ValkeyNotFound, start_valkey

    try:
        server = start_valkey()
    except ValkeyNotFound as exc:
        pytest.skip(str(exc))
    nodes: list[RunningNode] = []
    try:
        common = {"engine": "valkey", "valkey_url": server.url, "valkey_prefix": "traces-list",
                  "heartbeat_interval": "0.2", "failure_timeout": "1.0", "valkey_timeout": "0.5"}
        for name in ("v1", "v2"):
            nodes.append(await start_node(nursery, InMemorySpanExporter(), node_name=name, **common))
        async with httpx.AsyncClient(timeout=10) as http:
            async def peers_known() -> bool:
                body = (await http.get(f"{nodes[0].url}/nodes")).json()
                return sorted(body["nodes"]) == ["v1", "v2"]
            await wait_http(peers_known)
            assert (await http.put(f"{nodes[1].url}/kv/valkey-listed", json=1)).status_code == 200

            async def listed() -> dict[str, Any] | None:
                r = await http.get(f"{nodes[0].url}{LIST}", params={"name": "PUT"})
                body: dict[str, Any] = r.json()
                return body if body["traces"] else None
            body = await wait_http(listed)
            assert body["nodes"] == ["v1", "v2"] and body["partial"] is False
            (put,) = body["traces"]
            assert (put["root_node"], put["root_name"], put["nodes"][0]) == ("v2", "PUT /kv/{key}", "v2")

            # A chat message delivered on v2 hangs under v1's spans: whole, no parent missing.
            async with json_client(nodes[0], "alice") as alice, json_client(nodes[1], "bob") as bob:
                assert (await alice.request("join", room="x"))["type"] == "ok"
                assert (await bob.request("join", room="x"))["type"] == "ok"

                async def bob_visible() -> bool:
                    r = await http.get(f"{nodes[0].url}/rooms/x")
                    return any(m["node"] == "v2" for m in r.json().get("members", []))
                await wait_http(bob_visible)
                trace_id = (await alice.request("chat", room="x", text="traced"))["trace_id"]
                assert (await bob.push("message"))["text"] == "traced"

                async def whole() -> dict[str, Any] | None:
                    got: dict[str, Any] = (await http.get(f"{nodes[0].url}{LIST}/{trace_id}")).json()
                    return got if {s["node"] for s in got.get("spans", [])} == {"v1", "v2"} else None
                chat = await wait_http(whole)
                assert chat["partial"] is False and chat["orphans"] == [] and chat["missing"] == []
    finally:
        for running in nodes:
            running.stop()
        server.close()
