"""`/debug/traces/api/...` over real HTTP: one node's buffer, and traces assembled
from a real three-node cluster, partial when a member is down."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.node import RunningNode
from tests.harness import start_node

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


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "x"}, {"limit": "5000"}, {"min_ms": "-1"},
                                    {"min_ms": "fast"}])
async def test_bad_list_query_is_400(http: httpx.AsyncClient, params: dict[str, str]) -> None:
    r = await http.get(LIST, params=params)
    assert r.status_code == 400
    assert next(iter(params)) in r.json()["error"]


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
            assert listing == {"node": running.node.name, "enabled": False, "traces": []}
            assert (await http.get(f"{LIST}/{'ab' * 16}")).status_code == 404
    finally:
        running.stop()


# -- three nodes ---------------------------------------------------------------

@pytest.fixture
async def members(nursery: trio.Nursery) -> AsyncIterator[list[tuple[RunningNode, httpx.AsyncClient]]]:
    fast = {"cluster_bind": "127.0.0.1:0", "cluster_secret": SECRET, "heartbeat_interval": "0.2",
            "failure_timeout": "1.0", "cluster_request_timeout": "2.0"}
    out: list[tuple[RunningNode, httpx.AsyncClient]] = []
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
    yield out
    for running, http in out:
        await http.aclose()
        running.stop()


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
