"""Spans leave a real node process over OTLP/gRPC and arrive, gzip-compressed and
correctly parented, at a real receiver; a dead collector costs nothing but one warning."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from server.ports import free_port
from tests.e2e.otlp_receiver import OtlpReceiver, ReceivedSpan, decode_attributes
from tests.e2e.processes import node_process

pytestmark = pytest.mark.e2e

SHUTDOWN_TIMEOUT = 5.0  # the node's default shutdown_timeout
EXPECTED_NAMES = {"GET /kv/{key}", "POST /kv", "GET /", "WS /ws", "websocket.connect",
                  "websocket.message", "websocket.disconnect", "kv.put", "kv.get", "chat.broadcast"}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


class JsonWs:
    """Minimal `webserver.v1` client: replies by ref, pushes kept aside, batches unpacked."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []
        self._ref = 0

    async def _take(self, match: Any, timeout: float = 10) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                for i, frame in enumerate(self.frames):
                    if match(frame):
                        return self.frames.pop(i)
                frame = json.loads(await self.ws.get_message())
                self.frames.extend(frame["frames"] if frame.get("type") == "batch" else [frame])

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._ref += 1
        ref = f"r{self._ref}"
        await self.ws.send_message(json.dumps({"type": kind, "ref": ref, **fields}))
        reply = await self._take(lambda f: f.get("ref") == ref)
        assert reply["type"] == "ok", reply
        return reply

    async def push(self, kind: str) -> dict[str, Any]:
        return await self._take(lambda f: f.get("type") == kind and "ref" not in f)


def named(spans: list[ReceivedSpan], name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name]


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)


async def test_spans_arrive_at_a_real_otlp_receiver(receiver: OtlpReceiver) -> None:
    tag = uuid.uuid4().hex[:12]
    key = f"e2e-key-{tag}"
    secrets = {
        "kv_value": f"SECRET-KV-VALUE-{tag}",
        "ws_kv_value": f"SECRET-WS-KV-VALUE-{tag}",
        "plain_chat": f"SECRET-PLAIN-CHAT-{tag}",
        "json_chat": f"SECRET-JSON-CHAT-{tag}",
    }
    room = f"e2e-room-{tag}"
    env: dict[str, str | None] = {"OTEL_SDK_DISABLED": None,
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                  "OTEL_BSP_SCHEDULE_DELAY": "200"}
    async with node_process(env) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            r = await http.get("/")
            assert (r.status_code, r.text) == (200, "Hello World")
            r = await http.post("/kv", json={"key": key, "value": secrets["kv_value"]})
            assert r.status_code == 200, r.text
            r = await http.get(f"/kv/{key}")
            assert r.status_code == 200 and r.json()["value"] == secrets["kv_value"], r.text
            r = await http.get(f"/kv/missing-{tag}")
            assert r.status_code == 404, r.text
            r = await http.get("/nodes")
            assert r.status_code == 200, r.text
            node_name = r.json()["nodes"][0]
        assert node_name == node.node_name
        # Batches go out while the node runs (every 200 ms), not only at shutdown.
        await receiver.wait_for_async(lambda s: any(x.name == "POST /kv" for x in s), timeout=10)

        # Plain protocol: alice's text reaches bob in room "default".
        async with open_websocket_url(f"{node.ws_url}?username=alice") as alice, \
                open_websocket_url(f"{node.ws_url}?username=bob") as bob:
            await alice.send_message(secrets["plain_chat"])
            with trio.fail_after(10):
                got = json.loads(await bob.get_message())
            assert (got["user"], got["text"]) == ("alice", secrets["plain_chat"])

        # JSON protocol: join, chat (dave receives it), kv.put.
        async with open_websocket_url(f"{node.ws_url}?username=carol",
                                      subprotocols=["webserver.v1"]) as ws_carol, \
                open_websocket_url(f"{node.ws_url}?username=dave",
                                   subprotocols=["webserver.v1"]) as ws_dave:
            carol, dave = JsonWs(ws_carol), JsonWs(ws_dave)
            await dave.request("join", room=room)
            await carol.request("join", room=room)
            chat_reply = await carol.request("chat", room=room, text=secrets["json_chat"])
            pushed = await dave.push("message")
            assert pushed["text"] == secrets["json_chat"], pushed
            await carol.request("kv.put", key=f"{key}-ws", value={"v": secrets["ws_kv_value"]})

        assert await node.terminate(SHUTDOWN_TIMEOUT + 10) == 0, node.describe()

    # The node flushed before exiting; allow the receiver a moment regardless.
    spans = await receiver.wait_for_async(
        lambda s: EXPECTED_NAMES <= {x.name for x in s} and len(named(s, "WS /ws")) >= 4, timeout=10)

    requests = receiver.requests()
    assert requests and all(r.encoding == "gzip" for r in requests), \
        [r.encoding for r in requests]

    for span in spans:
        assert span.service_name == "webserver", span
        assert span.instance_id == node_name, span

    # HTTP: GET /kv/{key} with old and stable attribute names; kv.get is its child.
    (get_span,) = [s for s in named(spans, "GET /kv/{key}") if s.attributes.get("url.path") == f"/kv/{key}"]
    assert get_span.kind == "SERVER"
    for attr, expected in {"http.method": "GET", "http.route": "/kv/{key}", "http.status_code": 200,
                           "http.request.method": "GET", "url.path": f"/kv/{key}",
                           "http.response.status_code": 200}.items():
        assert get_span.attributes.get(attr) == expected, (attr, get_span.attributes)
    (kv_get,) = [s for s in named(spans, "kv.get") if s.parent_span_id == get_span.span_id]
    assert kv_get.trace_id == get_span.trace_id
    assert kv_get.attributes["kv.key"] == key
    assert kv_get.attributes["kv.node"] == node_name
    assert kv_get.attributes["kv.found"] is True
    assert isinstance(kv_get.attributes["kv.duration_us"], int) and kv_get.attributes["kv.duration_us"] >= 0

    missing = [s for s in named(spans, "kv.get") if s.attributes.get("kv.key") == f"missing-{tag}"]
    assert len(missing) == 1 and missing[0].attributes["kv.found"] is False, missing

    # chat.broadcast is the child of the sender's websocket.message, in that message's trace.
    by_id = {s.span_id: s for s in spans}
    broadcasts = named(spans, "chat.broadcast")
    (json_broadcast,) = [b for b in broadcasts if b.attributes.get("chat.room") == room]
    assert json_broadcast.trace_id == chat_reply["trace_id"]
    for broadcast in broadcasts:
        parent = by_id.get(broadcast.parent_span_id)
        assert parent is not None and parent.name == "websocket.message", (broadcast, parent)
        assert parent.trace_id == broadcast.trace_id
    assert json_broadcast.attributes["chat.sender"] == "carol"
    assert json_broadcast.attributes["chat.recipients"] == 1
    assert isinstance(json_broadcast.attributes["chat.duration_us"], int)
    plain = [b for b in broadcasts if b.attributes.get("chat.room") == "default"]
    assert [b.attributes["chat.sender"] for b in plain] == ["alice"]

    # Values and chat texts never become attributes (nor anything else on the wire).
    for span in spans:
        for text in [*strings_in(span.attributes), *strings_in(span.resource), span.name]:
            for secret in secrets.values():
                assert secret not in text, (secret, span)
    for request in requests:
        raw = request.request.SerializeToString()
        for secret in secrets.values():
            assert secret.encode() not in raw, secret


async def test_a_dead_collector_costs_one_warning_and_no_requests() -> None:
    dead_port = free_port()  # bound and closed again: nothing listens there
    env: dict[str, str | None] = {"OTEL_SDK_DISABLED": None,
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}",
                                  "OTEL_BSP_SCHEDULE_DELAY": "200",
                                  # Each failed export gives up after 1 s, so several fail in the test.
                                  "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    async with node_process(env) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            with trio.fail_after(30):  # not a timing test: only "no hang"
                for i in range(200):
                    if i % 2:
                        r = await http.get("/")
                    else:
                        r = await http.post("/kv", json={"key": f"k{i}", "value": "v"})
                    assert r.status_code == 200, (i, r.text)
            await trio.sleep(3)  # exports every 200 ms, each failing within ~1 s
            assert (await http.get("/health")).status_code == 200
        assert await node.terminate(SHUTDOWN_TIMEOUT + 5) == 0, node.describe()
        stderr = node.stderr()

    warnings = [line for line in stderr.splitlines() if "cannot export spans" in line]
    assert len(warnings) == 1, stderr
    assert f"127.0.0.1:{dead_port}" in warnings[0]
    assert "Traceback" not in stderr, stderr


async def test_without_a_collector_the_node_stops_without_waiting_for_retries() -> None:
    """With the exporter's default 10 s timeout a failed export backs off and retries;
    at shutdown the final flush (spans, metrics) makes one attempt instead, so the
    node does not sit out shutdown_timeout."""
    env: dict[str, str | None] = {"OTEL_SDK_DISABLED": None,
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    async with node_process(env) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            for i in range(5):
                assert (await http.put(f"/kv/k{i}", json=i)).status_code == 200
        stopping = trio.current_time()
        assert await node.terminate(SHUTDOWN_TIMEOUT + 5) == 0, node.describe()
        stopped_in = trio.current_time() - stopping
        stderr = node.stderr()
    assert "did not finish" not in stderr and "aborting retry" not in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert stopped_in < SHUTDOWN_TIMEOUT - 1, (stopped_in, stderr)


async def test_metrics_are_pushed_over_otlp_with_exemplars_that_point_at_traces(
        receiver: OtlpReceiver) -> None:
    env: dict[str, str | None] = {"OTEL_SDK_DISABLED": None,
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                  "OTEL_BSP_SCHEDULE_DELAY": "200",
                                  "OTEL_METRIC_EXPORT_INTERVAL": "500"}
    async with node_process(env) as node:
        async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
            await http.put("/kv/metered", json=1)
            for _ in range(7):
                assert (await http.get("/kv/metered")).status_code == 200

            def duration_point() -> Any:
                for request in reversed(receiver.metric_requests()):
                    for rm in request.resource_metrics:
                        for sm in rm.scope_metrics:
                            for metric in sm.metrics:
                                if metric.name != "http.server.request.duration":
                                    continue
                                for p in metric.histogram.data_points:
                                    attrs = decode_attributes(p.attributes)
                                    if attrs.get("http.route") == "/kv/{key}" and \
                                            attrs.get("http.request.method") == "GET":
                                        return rm, metric, p
                return None

            with trio.fail_after(20):
                while (found := duration_point()) is None:
                    await trio.sleep(0.2)
            resource_metrics, metric, point = found
            assert metric.unit == "s" and point.count == 7
            resource = decode_attributes(resource_metrics.resource.attributes)
            assert resource["service.name"] == "webserver"
            assert point.exemplars, "histogram points carry exemplars"
            exemplar_traces = {e.trace_id.hex() for e in point.exemplars}
            spans = await receiver.wait_for_async(
                lambda spans: bool(exemplar_traces & {s.trace_id for s in named(spans, "GET /kv/{key}")}))
            assert exemplar_traces & {s.trace_id for s in named(spans, "GET /kv/{key}")}
        assert await node.terminate(SHUTDOWN_TIMEOUT + 5) == 0, node.describe()
