"""The slow-consumer policy: a member that stops reading costs the others nothing,
loses frames (counted) instead of growing memory, and is closed with 1008."""

from __future__ import annotations

import json
import socket

import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trio_websocket import ConnectionClosed, open_websocket_url, wrap_client_stream

from tests.harness import close_reason, start_node, ws_url


async def test_stalled_reader_is_dropped_then_closed_and_others_unaffected(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    node = await start_node(nursery, exporter, outbound_queue_size=8, slow_consumer_timeout=0.3,
                            tcp_user_timeout=5)
    host, port = node.url.removeprefix("http://").rsplit(":", 1)

    # The stalled client: a small receive buffer and a one-message queue, never read.
    stream = await trio.open_tcp_stream(host, int(port))
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled = await wrap_client_stream(nursery, stream, host, "/ws?username=stalled",
                                       message_queue_size=1)
    text = "x" * 12000
    sent = 0
    async with open_websocket_url(ws_url(node, "username=sender")) as sender, \
            open_websocket_url(ws_url(node, "username=fast"), message_queue_size=4096) as fast:
        received: list[str] = []

        async def read_fast() -> None:
            while True:
                received.append(str(await fast.get_message()))

        async with trio.open_nursery() as readers:
            readers.start_soon(read_fast)
            stalled_conn = next(c for c in node.node.hub.connections.values() if c.username == "stalled")
            with trio.fail_after(20):
                while stalled_conn.close_request is None:
                    await sender.send_message(f"{sent}:{text}")
                    sent += 1
                    await trio.sleep(0.001)
                # Everyone else got every message, in order, while the stalled one dropped.
                while len(received) < sent:
                    await trio.sleep(0.01)
            readers.cancel_scope.cancel()
        assert [json.loads(m)["text"].split(":", 1)[0] for m in received] == [str(i) for i in range(sent)]

    code, reason = stalled_conn.close_request
    assert code == 1008 and "slow consumer" in reason
    assert stalled_conn.dropped > 0 and node.node.hub.stats.evicted == 1
    fast_conns = [c for c in node.node.hub.connections.values() if c.username == "fast"]
    assert all(c.dropped == 0 for c in fast_conns)
    # Evicted at once: no longer a member, so no more frames pile up for it.
    room = node.node.hub.rooms.get("default")
    assert room is not None and stalled_conn.id not in room.members
    # Its queue stayed bounded the whole time (plus the reserve for join history).
    assert stalled_conn.capacity == 8 + node.node.settings.history_size
    assert stalled_conn.queued <= stalled_conn.capacity

    # When it reads again it gets what was already on the wire, then the 1008 close.
    with pytest.raises(ConnectionClosed) as info, trio.fail_after(10):
        while True:
            await stalled.get_message()
    code, reason = close_reason(info.value)
    assert code == 1008 and "slow consumer" in reason
    node.stop()


async def test_reply_backpressure_does_not_drop_replies(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    """Replies to a client's own requests wait for room rather than being dropped."""
    node = await start_node(nursery, exporter, outbound_queue_size=2)
    async with open_websocket_url(ws_url(node, "username=a&protocol=json"),
                                  message_queue_size=1) as ws:
        for i in range(50):
            await ws.send_message(f'{{"type": "ping", "ref": {i}}}')
        refs: list[int] = []
        with trio.fail_after(10):
            while len(refs) < 50:
                frame = json.loads(await ws.get_message())
                frames = frame["frames"] if frame["type"] == "batch" else [frame]
                refs.extend(f["ref"] for f in frames)
        assert refs == list(range(50))
    node.stop()
