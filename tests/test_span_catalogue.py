"""Every span of the catalogue: name, parent, kind, attributes (never durations)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from trio_websocket import open_websocket_url

from server.serve import RunningNode
from tests.harness import close_reason, json_client, one_span, spans_named, wait_for_spans, ws_url
from tracing import spans as S


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent else None


def _attrs(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


async def test_http_span_names_attributes_and_kv_child(
        node: RunningNode, http: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    await http.post("/kv", json={"key": "k1", "value": "secret-value-1"})
    await wait_for_spans(exporter, "POST /kv")  # a span ends just after its response is sent
    exporter.clear()
    r = await http.get("/kv/k1?x=1", headers={"user-agent": "tester/1.0"})
    assert r.status_code == 200
    await wait_for_spans(exporter, "GET /kv/{key}")
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == ["GET /kv/{key}", "kv.get"]
    http_span = one_span(spans, "GET /kv/{key}")
    assert http_span.kind is SpanKind.SERVER
    assert http_span.parent is None
    a = _attrs(http_span)
    port = int(node.url.rsplit(":", 1)[1])
    assert a == {
        "http.method": "GET", "http.request.method": "GET",
        "http.target": "/kv/k1?x=1", "url.path": "/kv/k1", "url.query": "x=1", "url.scheme": "http",
        "http.route": "/kv/{key}", "http.status_code": 200, "http.response.status_code": 200,
        "http.user_agent": "tester/1.0", "user_agent.original": "tester/1.0",
        "client.address": "127.0.0.1", "server.address": "127.0.0.1", "server.port": port,
        "network.protocol.version": "1.1",
    }
    assert http_span.status.status_code is StatusCode.UNSET

    kv = one_span(spans, "kv.get")
    assert kv.kind is SpanKind.INTERNAL
    assert _parent_id(kv) == http_span.context.span_id
    assert kv.context.trace_id == http_span.context.trace_id
    ka = _attrs(kv)
    assert ka["kv.key"] == "k1" and ka["kv.node"] == node.node.name and ka["kv.found"] is True
    assert isinstance(ka["kv.duration_us"], int)


@pytest.mark.parametrize(("method", "path", "body", "name", "child"), [
    ("GET", "/", None, "GET /", None),
    ("GET", "/nodes", None, "GET /nodes", None),
    ("GET", "/health", None, "GET /health", None),
    ("POST", "/kv", {"key": "a", "value": "v"}, "POST /kv", "kv.put"),
    ("PUT", "/kv/a/b", 1, "PUT /kv/{key}", "kv.put"),
    ("DELETE", "/kv/none", None, "DELETE /kv/{key}", "kv.delete"),
    ("GET", "/kv/none", None, "GET /kv/{key}", "kv.get"),
    ("GET", "/rooms", None, "GET /rooms", None),
    ("GET", "/rooms/x", None, "GET /rooms/{room}", None),
    ("GET", "/api/openapi", None, "GET /api/openapi", None),
    ("GET", "/not/a/route", None, "GET", None),
])
async def test_every_route_is_named_by_its_template(
        node: RunningNode, http: httpx.AsyncClient, exporter: InMemorySpanExporter,
        method: str, path: str, body: object, name: str, child: str | None) -> None:
    r = await http.request(method, path, content=None if body is None else json.dumps(body))
    await wait_for_spans(exporter, name)
    spans = exporter.get_finished_spans()
    server = one_span(spans, name)
    assert server.attributes is not None
    assert server.attributes["http.status_code"] == r.status_code
    assert ("http.route" in server.attributes) == (name != "GET")
    assert not spans_named(spans, "http receive") and not spans_named(spans, "http send")
    if child:
        assert _parent_id(one_span(spans, child)) == server.context.span_id
    assert len(spans) == (2 if child else 1)


async def test_4xx_is_not_an_error_but_5xx_is(
        node: RunningNode, http: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    await http.get("/kv/missing")
    await http.put("/kv/k", content=b"{bad")
    await wait_for_spans(exporter, "PUT /kv/{key}")
    for span in exporter.get_finished_spans():
        assert span.status.status_code is StatusCode.UNSET, span.name

    def boom() -> None:
        raise RuntimeError("injected fault")

    node.node.store.get = lambda key: boom()  # type: ignore[assignment,method-assign]
    exporter.clear()
    r = await http.get("/kv/x")
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}
    server = (await wait_for_spans(exporter, "GET /kv/{key}"))[0]
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None and server.attributes["error.type"] == "RuntimeError"
    event = next(e for e in server.events if e.name == "exception")
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "RuntimeError"
    assert "injected fault" in str(event.attributes["exception.message"])
    assert "boom" in str(event.attributes["exception.stacktrace"])


async def test_incoming_traceparent_is_continued(
        node: RunningNode, http: httpx.AsyncClient, exporter: InMemorySpanExporter) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    await http.get("/", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    span = (await wait_for_spans(exporter, "GET /"))[0]
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331


async def test_websocket_connection_spans(node: RunningNode, exporter: InMemorySpanExporter) -> None:
    async with open_websocket_url(ws_url(node, "username=alice")) as alice, \
            open_websocket_url(ws_url(node, "username=bob")) as bob:
        await alice.send_message("top secret chat text")
        with trio.fail_after(5):
            await bob.get_message()
    conns = await wait_for_spans(exporter, S.WS_CONNECTION, 2)
    spans = exporter.get_finished_spans()
    for conn in conns:
        a = _attrs(conn)
        assert conn.kind is SpanKind.SERVER and conn.parent is None
        assert str(a["websocket.peer"]).startswith("127.0.0.1:")
        assert isinstance(a["websocket.connection_id"], str)
        assert isinstance(a["websocket.duration_ms"], int)
        assert a["http.route"] == "/ws" and a["websocket.subprotocol"] == "text"
        assert conn.status.status_code is StatusCode.UNSET  # the client left: a normal end
        cid = a["websocket.connection_id"]
        connect = [s for s in spans_named(spans, S.WS_CONNECT) if _parent_id(s) == conn.context.span_id]
        disconnect = [s for s in spans_named(spans, S.WS_DISCONNECT)
                      if _parent_id(s) == conn.context.span_id]
        assert len(connect) == 1 and len(disconnect) == 1
        assert _attrs(connect[0]) == {"websocket.peer": a["websocket.peer"], "websocket.connection_id": cid}
        da = _attrs(disconnect[0])
        assert da["websocket.connection_id"] == cid and da["websocket.peer"] == a["websocket.peer"]
        assert isinstance(da["websocket.duration_ms"], int) and da["websocket.closed_by"] == "client"
        assert "websocket.close_code" not in da
        assert disconnect[0].status.status_code is StatusCode.UNSET

    message = one_span(spans, S.WS_MESSAGE)
    assert message.kind is SpanKind.SERVER and message.parent is None  # its own trace...
    sender_conn = next(c for c in conns if _attrs(c)["websocket.username"] == "alice")
    assert [link.context.span_id for link in message.links] == [sender_conn.context.span_id]  # ...linked
    assert _attrs(message) == {"websocket.message_type": "text",
                               "websocket.message_size": len("top secret chat text"),
                               "websocket.connection_id": _attrs(sender_conn)["websocket.connection_id"]}

    broadcast = one_span(spans, S.CHAT_BROADCAST)
    assert _parent_id(broadcast) == message.context.span_id
    assert broadcast.context.trace_id == message.context.trace_id
    ba = _attrs(broadcast)
    assert ba["chat.room"] == "default" and ba["chat.sender"] == "alice" and ba["chat.recipients"] == 1
    assert isinstance(ba["chat.duration_us"], int)
    for span in spans:  # no chat text in any attribute
        assert all("top secret" not in str(v) for v in (span.attributes or {}).values()), span.name


async def test_json_messages_parent_kv_and_broadcast_spans(
        node: RunningNode, exporter: InMemorySpanExporter) -> None:
    async with json_client(node, "alice") as alice, json_client(node, "bob") as bob:
        await alice.request("join", room="r")
        await bob.request("join", room="r")
        exporter.clear()
        sent = await alice.request("chat", room="r", text="hush")
        await bob.push("message")
        put = await alice.request("kv.put", key="k", value="private-value")
        got = await alice.request("kv.get", key="k")
        await alice.request("kv.delete", key="k")
    spans = exporter.get_finished_spans()
    messages = {format(s.context.trace_id, "032x"): s for s in spans_named(spans, S.WS_MESSAGE)}
    chat_msg = messages[sent["trace_id"]]
    assert _attrs(chat_msg)["websocket.message_type"] == "chat"
    broadcast = one_span(spans, S.CHAT_BROADCAST)
    assert _parent_id(broadcast) == chat_msg.context.span_id
    assert _attrs(broadcast)["chat.recipients"] == 1
    for op, reply in (("kv.put", put), ("kv.get", got)):
        msg = messages[reply["trace_id"]]
        assert _attrs(msg)["websocket.message_type"] == op
        kv = one_span(spans, op)
        assert _parent_id(kv) == msg.context.span_id and kv.kind is SpanKind.INTERNAL
    assert _attrs(one_span(spans, S.KV_DELETE))["kv.found"] is True
    for span in spans:
        assert all("private-value" not in str(v) and "hush" not in str(v)
                   for v in (span.attributes or {}).values())


async def test_abrupt_client_disconnect_is_not_an_error(
        node: RunningNode, exporter: InMemorySpanExporter) -> None:
    host, port = node.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        b"GET /ws?username=x HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    with trio.fail_after(5):
        assert b"101" in await stream.receive_some(4096)
    await stream.aclose()  # drop TCP, no close frame
    conn = (await wait_for_spans(exporter, S.WS_CONNECTION))[0]
    assert conn.status.status_code is StatusCode.UNSET
    disconnect = (await wait_for_spans(exporter, S.WS_DISCONNECT))[0]
    assert disconnect.status.status_code is StatusCode.UNSET


async def test_server_fault_in_a_message_is_recorded(
        node: RunningNode, exporter: InMemorySpanExporter) -> None:
    def boom(key: str) -> None:
        raise RuntimeError("kv exploded")

    node.node.store.get = boom  # type: ignore[assignment,method-assign]
    async with json_client(node) as c:
        await c.ws.send_message(json.dumps({"type": "kv.get", "key": "k"}))
        from trio_websocket import ConnectionClosed
        with pytest.raises(ConnectionClosed) as info, trio.fail_after(5):
            await c.ws.get_message()
        assert close_reason(info.value)[0] == 1011
    message = one_span(exporter.get_finished_spans(), S.WS_MESSAGE)
    assert message.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" for e in message.events)
    conn = (await wait_for_spans(exporter, S.WS_CONNECTION))[0]
    assert conn.status.status_code is StatusCode.ERROR


async def test_request_spans_are_roots_whatever_the_server_task_inherited(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    from tests.harness import start_node

    outer = TracerProvider(shutdown_on_exit=False).get_tracer("t").start_span("outer")
    with trace.use_span(outer):  # tasks the node spawns inherit this context
        node = await start_node(nursery, exporter)
    async with httpx.AsyncClient(base_url=node.url) as http:
        await http.get("/health")
    span = (await wait_for_spans(exporter, "GET /health"))[0]
    assert span.parent is None
    assert span.context.trace_id != outer.get_span_context().trace_id
    node.stop()
