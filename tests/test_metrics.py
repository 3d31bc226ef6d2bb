"""Metrics after known traffic, read two ways: through an in-memory reader on the
node's meter provider, and through a real scrape of GET /metrics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import trio
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from server.serve import RunningNode, serve_node
from server.settings import load_settings
from tests.harness import json_client, make_provider, ws_url
from tracing.metrics import make_meter_provider


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
async def metered(nursery: trio.Nursery, reader: InMemoryMetricReader) -> AsyncIterator[RunningNode]:
    settings = load_settings(environ={}, overrides={"bind": "127.0.0.1:0"})
    running: RunningNode = await nursery.start(
        lambda task_status: serve_node(settings, make_provider(InMemorySpanExporter()),
                                       metrics=make_meter_provider(extra_readers=[reader]),
                                       task_status=task_status))
    yield running
    running.stop()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found: list[Any] = []
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def point(reader: InMemoryMetricReader, name: str, **attributes: Any) -> Any:
    matching = [p for p in points(reader, name)
                if all(p.attributes.get(k) == v for k, v in attributes.items())]
    assert len(matching) == 1, (name, attributes, [p.attributes for p in points(reader, name)])
    return matching[0]


async def test_http_requests_are_counted_by_route_method_and_status(
        metered: RunningNode, reader: InMemoryMetricReader) -> None:
    async with httpx.AsyncClient(base_url=metered.url) as http:
        assert (await http.put("/kv/k", json="v")).status_code == 200
        for _ in range(7):
            assert (await http.get("/kv/k")).status_code == 200
        assert (await http.get("/kv/missing")).status_code == 404
        assert (await http.get("/no/such/path")).status_code == 404
    await trio.sleep(0.1)  # the client has the last response a moment before it is recorded
    ok = point(reader, "http.server.request.duration", **{
        "http.route": "/kv/{key}", "http.request.method": "GET", "http.response.status_code": 200})
    assert isinstance(ok, HistogramDataPoint) and ok.count == 7 and ok.sum > 0
    assert list(ok.explicit_bounds)[:3] == [0.005, 0.01, 0.025]
    missing = point(reader, "http.server.request.duration", **{
        "http.route": "/kv/{key}", "http.response.status_code": 404})
    assert missing.count == 1
    unrouted = [p for p in points(reader, "http.server.request.duration") if "http.route" not in p.attributes]
    assert len(unrouted) == 1 and unrouted[0].count == 1, [  # no raw path becomes a label
        dict(p.attributes) for p in points(reader, "http.server.request.duration")]
    active = point(reader, "http.server.active_requests", **{"http.request.method": "GET"})
    assert isinstance(active, NumberDataPoint) and active.value == 0
    gets = point(reader, "webserver.kv.operation.duration", **{"kv.operation": "get", "kv.outcome": "ok"})
    assert gets.count == 7
    assert point(reader, "webserver.kv.operation.duration",
                 **{"kv.operation": "get", "kv.outcome": "not_found"}).count == 1
    assert point(reader, "webserver.kv.operation.duration",
                 **{"kv.operation": "put", "kv.outcome": "ok"}).count == 1


async def test_websocket_connections_messages_and_chat(
        metered: RunningNode, reader: InMemoryMetricReader) -> None:
    async with json_client(metered, "alice") as alice, json_client(metered, "bob") as bob:
        assert point(reader, "webserver.websocket.connections",
                     **{"websocket.subprotocol": "webserver.v1"}).value == 2
        await alice.request("join", room="r")
        await bob.request("join", room="r")
        for _ in range(3):
            await alice.request("ping")
        await alice.request("chat", room="r", text="hi")
        assert (await bob.push("message"))["text"] == "hi"
        await alice.ws.send_message("{not json")
        await alice.push("error")
    async with open_websocket_url(ws_url(metered, "username=carol")) as plain:
        await plain.send_message("hello")
        await trio.sleep(0.2)
    await trio.sleep(0.2)
    assert point(reader, "webserver.websocket.connections",
                 **{"websocket.subprotocol": "webserver.v1"}).value == 0
    messages = {(p.attributes["direction"], p.attributes.get("websocket.message_type")): p.value
                for p in points(reader, "webserver.websocket.messages")}
    assert messages[("in", "ping")] == 3 and messages[("in", "join")] == 2
    assert messages[("in", "chat")] == 1 and messages[("in", "invalid")] == 1
    assert messages[("in", "text")] == 1
    assert messages[("out", None)] >= 3 + 2 + 1 + 1  # replies, the pushed message, the error
    broadcasts = point(reader, "webserver.chat.broadcast.duration")
    assert broadcasts.count == 2  # alice's chat and carol's plain text
    assert point(reader, "webserver.chat.recipients").sum == 1  # bob; carol's room was empty


async def test_metrics_endpoint_serves_the_same_figures_to_prometheus(metered: RunningNode) -> None:
    async with httpx.AsyncClient(base_url=metered.url) as http:
        await http.put("/kv/k", json=1)
        for _ in range(7):
            await http.get("/kv/k")
        await trio.sleep(0.1)
        scrape = await http.get("/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    duration = families["http_server_request_duration_seconds"]
    counts = [s for s in duration.samples if s.name.endswith("_count")
              and s.labels.get("http_route") == "/kv/{key}" and s.labels.get("http_request_method") == "GET"]
    assert [s.value for s in counts] == [7.0]
    assert families["webserver_kv_operation_duration_seconds"].type == "histogram"
    assert "http_server_active_requests" in families
    kv = families["webserver_kv_operation_duration_seconds"].samples
    assert any(s.labels.get("kv_outcome") == "ok" and s.labels.get("kv_operation") == "get" for s in kv)
