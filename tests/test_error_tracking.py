"""Errors recorded on the spans where they happen: refused WebSocket requests and
protocol closes (client errors: events, status unset), replicas that do not
answer a KV request, and failed cluster handshakes (errors, with the exception)."""

from __future__ import annotations

import json

import httpx
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from trio_websocket import open_websocket_url

from server.serve import RunningNode
from tests.harness import json_client, start_node, ws_url
from tests.test_cluster_nodes import SECRET


def events(span: ReadableSpan, name: str) -> list[dict[str, object]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


async def test_refused_requests_and_protocol_closes_are_events_not_errors(
        node: RunningNode, exporter: InMemorySpanExporter) -> None:
    async with json_client(node, "alice") as alice:
        await alice.ws.send_message("{not json")
        await alice.push("error")
        await alice.ws.send_message(json.dumps({"type": "kv.get", "key": ""}))
        await alice.push("error")
    async with open_websocket_url(ws_url(node, "username=bob"), subprotocols=["webserver.v1"],
                                  max_message_size=10_000_000) as bob:
        await bob.send_message("x" * (node.node.settings.ws_max_message_size + 1))
        with trio.fail_after(5):
            while not bob.closed:
                try:
                    await bob.get_message()
                except Exception:
                    break
    await trio.sleep(0.2)
    spans = exporter.get_finished_spans()
    refused = [e for s in spans if s.name == "websocket.message"
               for e in events(s, "websocket.request_refused")]
    assert sorted(str(e["error.type"]) for e in refused) == ["bad_json", "bad_request"]
    assert all(s.status.status_code is StatusCode.UNSET for s in spans if s.name == "websocket.message")
    closes = [(s, events(s, "websocket.protocol_error")) for s in spans if s.name == "WS /ws"]
    too_big = [(s, e) for s, es in closes for e in es if e["websocket.close_code"] == 1009]
    assert len(too_big) == 1
    span, event = too_big[0]
    assert event["error.type"] == "message_too_big" and "limit" in str(event["exception.message"])
    assert span.status.status_code is StatusCode.UNSET


async def test_cluster_failures_are_recorded_where_they_happen(nursery: trio.Nursery) -> None:
    exporters = [InMemorySpanExporter() for _ in range(3)]
    fast = {"cluster_bind": "127.0.0.1:0", "heartbeat_interval": "0.2", "failure_timeout": "1.0",
            "cluster_request_timeout": "1.0"}
    n1 = await start_node(nursery, exporters[0], node_name="n1", cluster_secret=SECRET, **fast)
    assert n1.node.mesh is not None
    seed = n1.node.mesh.address
    n2 = await start_node(nursery, exporters[1], node_name="n2", cluster_secret=SECRET, peers=seed, **fast)
    intruder = await start_node(nursery, exporters[2], node_name="intruder", cluster_secret="y" * 40,
                                peers=seed, **fast)
    with trio.fail_after(10):
        while sorted(n1.node.live_members()) != ["n1", "n2"] or not [
                s for s in exporters[0].get_finished_spans() if s.name == "cluster.handshake"]:
            await trio.sleep(0.05)
    handshake = next(s for s in exporters[0].get_finished_spans() if s.name == "cluster.handshake")
    assert handshake.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in handshake.events)
    intruder.stop()
    # n2 goes away: n1's writes still need it for W=2 of the 2 replicas, and say why they fail.
    n2.stop()
    with trio.fail_after(10):
        while "n2" in n1.node.live_members():
            await trio.sleep(0.05)
    async with httpx.AsyncClient(base_url=n1.url) as http:
        assert (await http.put("/kv/unreachable", json=1)).status_code == 503
    put = next(s for s in exporters[0].get_finished_spans()
               if s.name == "kv.put" and (s.attributes or {}).get("kv.key") == "unreachable")
    assert put.status.status_code is StatusCode.ERROR
    failed = events(put, "cluster.request_failed")
    assert [e["kv.peer"] for e in failed] == ["n2"] and failed[0]["error.type"] == "LinkError"
    links = [s for s in exporters[0].get_finished_spans() if s.name == "cluster.link"]
    assert links and all((s.attributes or {})["cluster.peer"] == "n2" for s in links)
    n1.stop()
