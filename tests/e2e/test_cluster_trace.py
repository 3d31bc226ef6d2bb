"""One trace across node processes: three real clustered nodes export over OTLP/gRPC
to one real receiver, and a KV write or a chat message taken by node 1 shows up as
a single trace whose spans came from different nodes (told apart by the resource's
`service.instance.id`), each remote span parented on the span that sent the work."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.e2e.processes import ServerProcess, start_cluster, terminate_all, wait_converged
from tests.harness import JsonClient

pytestmark = pytest.mark.e2e

TEST_DEADLINE = 30.0
SPAN_DEADLINE = 10.0  # spans are exported every 100 ms
NAMES = ("t1", "t2", "t3")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
async def cluster(receiver: OtlpReceiver) -> AsyncIterator[list[ServerProcess]]:
    """Three nodes (t2 and t3 seeded with t1 only), all exporting to the receiver."""
    otel: dict[str, str | None] = {"OTEL_SDK_DISABLED": None,
                                   "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                                   "OTEL_BSP_SCHEDULE_DELAY": "100"}
    async with AsyncExitStack() as stack:
        nodes = await start_cluster(stack, secrets.token_hex(32), NAMES, extra=otel)
        with trio.fail_after(TEST_DEADLINE):
            await wait_converged(nodes, timeout=10)
        yield nodes
        codes = await terminate_all(nodes)  # together: each flushes its last spans
        assert set(codes.values()) == {0}, "\n".join(n.describe() for n in nodes)


def one(spans: list[ReceivedSpan], what: str) -> ReceivedSpan:
    assert len(spans) == 1, (what, spans)
    return spans[0]


def check_resource(span: ReceivedSpan, node: str) -> None:
    assert span.service_name == "webserver", span
    assert span.instance_id == node, span


async def test_a_kv_write_is_one_trace_across_nodes(cluster: list[ServerProcess],
                                                    receiver: OtlpReceiver) -> None:
    n1 = cluster[0]
    key = f"traced-{uuid.uuid4().hex[:8]}"
    with trio.fail_after(TEST_DEADLINE):
        async with httpx.AsyncClient(base_url=n1.url, timeout=10) as http:
            r = await http.put(f"/kv/{key}", json={"traced": True})
        assert r.status_code == 200, r.text

        def replica_puts(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
            return [s for s in spans if s.name == "kv.put" and s.kind == "SERVER"
                    and s.attributes.get("kv.key") == key]

        def complete(spans: list[ReceivedSpan]) -> bool:
            names = {s.name for s in spans if s.instance_id == "t1"}
            return {"PUT /kv/{key}", "kv.put"} <= names and len(replica_puts(spans)) == 2

        spans = await receiver.wait_for_async(complete, timeout=SPAN_DEADLINE)

    # t1: the HTTP request, then its kv.put (CLIENT: it asks the other replicas).
    http_span = one([s for s in spans if s.name == "PUT /kv/{key}"
                     and s.attributes.get("url.path") == f"/kv/{key}"], "PUT /kv/{key}")
    check_resource(http_span, "t1")
    assert http_span.kind == "SERVER" and http_span.parent_span_id == "", http_span
    assert http_span.attributes.get("http.response.status_code") == 200, http_span
    coordinator = one([s for s in spans if s.name == "kv.put" and s.kind == "CLIENT"
                       and s.attributes.get("kv.key") == key], "coordinator kv.put")
    check_resource(coordinator, "t1")
    assert coordinator.trace_id == http_span.trace_id
    assert coordinator.parent_span_id == http_span.span_id, (coordinator, http_span)
    assert coordinator.attributes["kv.node"] == "t1"
    assert coordinator.attributes["kv.replicas"] == 3 and coordinator.attributes["kv.quorum"] == 2
    assert coordinator.attributes["kv.acks"] in (2, 3), coordinator

    # t2 and t3: each replica's kv.put (SERVER), exported by that process, in t1's
    # trace and parented on t1's kv.put span: the context crossed the cluster link.
    replicas = replica_puts(spans)
    assert sorted(s.instance_id for s in replicas) == ["t2", "t3"], replicas
    for remote in replicas:
        check_resource(remote, remote.instance_id)
        assert remote.trace_id == coordinator.trace_id, (remote, coordinator)
        assert remote.parent_span_id == coordinator.span_id, (remote, coordinator)
        assert remote.attributes["kv.node"] == remote.instance_id, remote
    # One trace, spans from three processes.
    in_trace = [s for s in spans if s.trace_id == http_span.trace_id]
    assert {s.instance_id for s in in_trace} == {"t1", "t2", "t3"}, in_trace


async def test_a_chat_message_is_one_trace_across_nodes(cluster: list[ServerProcess],
                                                        receiver: OtlpReceiver) -> None:
    n1, n2, _ = cluster
    room = f"traced-{uuid.uuid4().hex[:8]}"
    with trio.fail_after(TEST_DEADLINE):
        async with open_websocket_url(f"{n1.ws_url}?username=alice", subprotocols=["webserver.v1"]) as a, \
                open_websocket_url(f"{n2.ws_url}?username=bob", subprotocols=["webserver.v1"]) as b:
            alice, bob = JsonClient(a), JsonClient(b)
            assert (await alice.request("join", room=room))["type"] == "ok"
            assert (await bob.request("join", room=room))["type"] == "ok"
            while (p := await alice.push("presence"))["user"] != "bob":
                pass
            assert (p["event"], p["node"]) == ("join", "t2"), p
            assert (await alice.request("chat", room=room, text="hello across nodes"))["type"] == "ok"
            got = await bob.push("message")
            assert (got["text"], got["node"]) == ("hello across nodes", "t1"), got

        def broadcasts(spans: list[ReceivedSpan], kind: str) -> list[ReceivedSpan]:
            return [s for s in spans if s.name == "chat.broadcast" and s.kind == kind
                    and s.attributes.get("chat.room") == room]

        def complete(spans: list[ReceivedSpan]) -> bool:
            producers = broadcasts(spans, "PRODUCER")
            return bool(producers and broadcasts(spans, "CONSUMER")
                        and any(s.span_id == producers[0].parent_span_id for s in spans))

        spans = await receiver.wait_for_async(complete, timeout=SPAN_DEADLINE)

    producer = one(broadcasts(spans, "PRODUCER"), "PRODUCER chat.broadcast")
    check_resource(producer, "t1")
    assert producer.attributes["chat.recipients"] == 1, producer  # bob, on t2
    assert producer.attributes["chat.remote_nodes"] == 1, producer
    consumer = one(broadcasts(spans, "CONSUMER"), "CONSUMER chat.broadcast")
    check_resource(consumer, "t2")
    assert consumer.trace_id == producer.trace_id, (consumer, producer)
    assert consumer.parent_span_id == producer.span_id, (consumer, producer)
    assert consumer.attributes["chat.origin_node"] == "t1", consumer
    assert consumer.attributes["chat.recipients"] == 1, consumer
    # The message bob received names the trace it belongs to.
    assert got.get("trace_id") == producer.trace_id, (got, producer)
    # t1's side of the trace starts at alice's websocket.message span.
    parent = one([s for s in spans if s.span_id == producer.parent_span_id], "the producer's parent")
    check_resource(parent, "t1")
    assert parent.name == "websocket.message", parent
