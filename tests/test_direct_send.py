"""Direct writes (server/http/direct_send.py, server/chat/wire.py): the broadcaster
writing frames straight to members' sockets under the pinned Hypercorn, on a real
node, with clients that read only when the test says so."""

from __future__ import annotations

import json
import socket
import struct
from collections import deque
from typing import Any

import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from trio_websocket import open_websocket_url
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Event, Ping, Pong, Request, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from server.chat.connection import Connection
from server.chat.wire import text_frame
from server.http.direct_send import DirectSocket, HandoffLock
from server.serve import RunningNode
from tests.harness import start_node, ws_url

# Frames far larger than one socket buffer allocation, so the write that fills a
# socket takes part of a frame rather than none of it.
BIG = 100_000
BIG_TEXT = {"max_chat_text_bytes": 120_000, "ws_max_message_size": 131_072}


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_wsproto_sends(size: int) -> None:
    text = ("é" * size)[:size] if size % 2 else "x" * size
    expected = FrameProtocol(client=False, extensions=[]).send_data(text, fin=True)
    assert text_frame(text) == expected


def test_text_frame_lengths() -> None:
    assert text_frame("hi") == b"\x81\x02hi"
    assert text_frame("a" * 126)[:4] == b"\x81\x7e" + struct.pack("!H", 126)
    assert text_frame("a" * 65536)[:10] == b"\x81\x7f" + struct.pack("!Q", 65536)


async def test_handoff_lock_is_fifo_and_released_by_another_task() -> None:
    lock = HandoffLock()
    order: list[str] = []

    async def user(name: str) -> None:
        async with lock:
            order.append(name)
            await trio.sleep(0.01)

    assert lock.hold_nowait() and not lock.hold_nowait()  # taken by the test itself
    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(user, name)
            await trio.sleep(0.01)  # parked in this order
        assert order == [] and lock.locked()

        async def releaser() -> None:  # another task releases what this one took
            lock.release()

        nursery.start_soon(releaser)
    assert order == ["a", "b", "c"] and not lock.locked()
    with pytest.raises(RuntimeError):
        lock.release()


async def test_handoff_lock_cancelled_waiter_does_not_get_it() -> None:
    lock = HandoffLock()
    lock.hold_nowait()
    got: list[str] = []

    async def waiter(name: str, scope: trio.CancelScope) -> None:
        with scope:
            async with lock:
                got.append(name)

    first, second = trio.CancelScope(), trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first", first)
        nursery.start_soon(waiter, "second", second)
        await trio.sleep(0.01)
        first.cancel()
        await trio.sleep(0.01)
        lock.release()
    assert got == ["second"] and not lock.locked()


class RawClient:
    """A WebSocket client over a bare socket (wsproto) that reads only when asked to."""

    def __init__(self, stream: trio.SocketStream, ws: WSConnection) -> None:
        self.stream = stream
        self.ws = ws
        self.events: deque[Event] = deque()
        self.texts: list[str] = []  # whole text messages, in order
        self.pongs: list[bytes] = []
        self.pings = 0
        self._partial = ""

    @classmethod
    async def connect(cls, node: RunningNode, query: str, *, rcvbuf: int | None = None,
                      deflate: bool = False) -> RawClient:
        host, port = node.url.removeprefix("http://").rsplit(":", 1)
        sock = trio.socket.socket()
        if rcvbuf is not None:  # before connect, so the window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect((host, int(port)))
        client = cls(trio.SocketStream(sock), WSConnection(ConnectionType.CLIENT))
        await client.stream.send_all(client.ws.send(Request(
            host=host, target=f"/ws?{query}", extensions=[PerMessageDeflate()] if deflate else [])))
        with trio.fail_after(5):
            while not any(isinstance(e, AcceptConnection) for e in client.events):
                await client._read()
        return client

    async def _read(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("the server closed the connection")
        self.ws.receive_data(data)
        for event in self.ws.events():
            self.events.append(event)
            if isinstance(event, TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self.texts.append(self._partial)
                    self._partial = ""
            elif isinstance(event, Pong):
                self.pongs.append(bytes(event.payload))
            elif isinstance(event, Ping):
                self.pings += 1

    async def read_until(self, done: Any, seconds: float = 20) -> None:
        with trio.fail_after(seconds):
            while not done():
                await self._read()

    async def ping(self, payload: bytes) -> None:
        await self.stream.send_all(self.ws.send(Ping(payload)))

    def indices(self) -> list[int]:
        return [int(json.loads(t)["text"].split(":", 1)[0]) for t in self.texts]


def member(node: RunningNode, username: str) -> Connection:
    return next(c for c in node.node.hub.connections.values() if c.username == username)


async def wait_for(check: Any, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not check():
            await trio.sleep(0.01)


async def direct_of(node: RunningNode, username: str) -> DirectSocket:
    """The member's direct socket, once its session has attached it (just after the accept)."""
    conn = member(node, username)
    await wait_for(lambda: conn.direct is not None, seconds=5)
    assert isinstance(conn.direct, DirectSocket)
    return conn.direct


async def fill_until_partial(sender: Any, direct: DirectSocket, start: int = 0) -> int:
    """Send big messages until one was written to `direct` only in part; the count sent."""
    sent = start
    with trio.fail_after(30):
        while not direct.partial_writes:
            assert direct._ws.connection.state.name == "OPEN", "closed before any partial write"
            await sender.send_message(f"{sent}:" + "x" * BIG)
            sent += 1
            await trio.sleep(0.002)
    return sent


async def test_plain_client_is_written_directly_in_order(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    node = await start_node(nursery, exporter)
    reader = await RawClient.connect(node, "username=reader")
    conn = member(node, "reader")
    await direct_of(node, "reader")
    async with open_websocket_url(ws_url(node, "username=sender")) as sender:
        for i in range(200):
            await sender.send_message(f"{i}:hello")
        await reader.read_until(lambda: len(reader.texts) >= 200)
    assert reader.indices() == list(range(200))
    assert conn.backlog == 0 and conn.dropped == 0
    node.stop()


async def test_deflate_client_and_setting_off_use_the_writer(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    node = await start_node(nursery, exporter)
    deflated = await RawClient.connect(node, "username=deflated", deflate=True)
    off = await start_node(nursery, exporter, ws_direct_writes=False)
    plain = await RawClient.connect(off, "username=plain")
    for running, client, name in ((node, deflated, "deflated"), (off, plain, "plain")):
        async with open_websocket_url(ws_url(running, "username=sender")) as sender:
            for i in range(20):
                await sender.send_message(f"{i}:" + "y" * 3000)
            await client.read_until(lambda c=client: len(c.texts) >= 20)  # type: ignore[misc]
        assert client.indices() == list(range(20))
        # Delivered, so its session is past the point where a direct socket is attached:
        # none (deflate frames differ per connection; the setting is off).
        assert member(running, name).direct is None
        running.stop()


async def test_frame_written_in_part_is_finished_before_anything_else(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    """A frame the socket took in part: the rest goes out before the queued frames and
    before Hypercorn's pong to a ping that arrived meanwhile; nothing is lost or torn."""
    # Pings every 50 ms meanwhile: never written while the frame's rest is pending.
    node = await start_node(nursery, exporter, outbound_queue_size=64, slow_consumer_timeout=30,
                            ws_ping_interval=0.05, **BIG_TEXT)
    slow = await RawClient.connect(node, "username=slow", rcvbuf=4096)
    conn = member(node, "slow")
    direct = await direct_of(node, "slow")
    async with open_websocket_url(ws_url(node, "username=sender")) as sender:
        sent = await fill_until_partial(sender, direct)
        await wait_for(lambda: direct.pending != b"" or conn.backlog > 0)
        await slow.ping(b"probe")  # Hypercorn's pong must wait for the rest of the frame
        for _ in range(5):  # queued behind it, for the writer
            await sender.send_message(f"{sent}:" + "z" * 100)
            sent += 1
        await slow.read_until(lambda: len(slow.texts) >= sent and slow.pongs)
    assert slow.indices() == list(range(sent))  # every frame whole, once, in order
    assert slow.pongs == [b"probe"] and conn.dropped == 0
    await wait_for(lambda: conn.backlog == 0 and not direct.pending)
    node.stop()


async def test_client_gone_with_a_frame_half_written(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    node = await start_node(nursery, exporter, slow_consumer_timeout=30, **BIG_TEXT)
    slow = await RawClient.connect(node, "username=slow", rcvbuf=4096)
    direct = await direct_of(node, "slow")
    async with open_websocket_url(ws_url(node, "username=sender")) as sender:
        sent = await fill_until_partial(sender, direct)
        # Reset, not FIN: the server's writes fail at once.
        slow.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        slow.stream.socket.close()
        await wait_for(lambda: all(c.username != "slow" for c in node.node.hub.connections.values()))
        # The node goes on: a new member gets what is sent next.
        fresh = await RawClient.connect(node, "username=fresh")
        await sender.send_message(f"{sent}:after")
        await fresh.read_until(lambda: any(t.endswith('after"') or "after" in t for t in fresh.texts))
    node.stop()


async def test_rest_never_read_ends_the_connection_in_bounded_time(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    """A client that stops reading in the middle of a frame: after max(slow_consumer_timeout,
    tcp_user_timeout) its socket is closed (half a frame cannot be followed by a close frame);
    the others get every message."""
    node = await start_node(nursery, exporter, slow_consumer_timeout=1, tcp_user_timeout=0, **BIG_TEXT)
    stuck = await RawClient.connect(node, "username=stuck", rcvbuf=4096)  # kept open, never read
    direct = await direct_of(node, "stuck")
    async with open_websocket_url(ws_url(node, "username=sender")) as sender, \
            open_websocket_url(ws_url(node, "username=other"), message_queue_size=10_000) as other:
        sent = await fill_until_partial(sender, direct)
        await wait_for(lambda: all(c.username != "stuck" for c in node.node.hub.connections.values()),
                       seconds=5)
        with trio.fail_after(10):
            got = [json.loads(str(await other.get_message()))["text"] for _ in range(sent)]
    assert [int(t.split(":", 1)[0]) for t in got] == list(range(sent))
    await stuck.stream.aclose()
    node.stop()


async def test_the_node_pings_idle_connections_plain_and_deflate(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    """One pinger task for the node (not Hypercorn's task per connection): every idle
    connection gets a ping each ws_ping_interval, deflate ones too (control frames are
    never compressed), and chat still decodes around the pings."""
    node = await start_node(nursery, exporter, ws_ping_interval=0.1)
    plain = await RawClient.connect(node, "username=plain")
    deflated = await RawClient.connect(node, "username=deflated", deflate=True)
    assert member(node, "deflated").direct is None  # broadcast frames: the writer's path
    await plain.read_until(lambda: plain.pings >= 3, seconds=10)
    await deflated.read_until(lambda: deflated.pings >= 3, seconds=10)
    async with open_websocket_url(ws_url(node, "username=sender")) as sender:
        for i in range(5):
            await sender.send_message(f"{i}:between pings")
            await trio.sleep(0.05)
        await deflated.read_until(lambda: len(deflated.texts) >= 5)
    assert deflated.indices() == list(range(5))
    node.stop()


async def test_no_pings_when_the_interval_is_zero(
        nursery: trio.Nursery, exporter: InMemorySpanExporter) -> None:
    node = await start_node(nursery, exporter, ws_ping_interval=0)
    client = await RawClient.connect(node, "username=quiet")
    with trio.move_on_after(1.5):
        await client.read_until(lambda: False, seconds=10)
    assert client.pings == 0
    node.stop()
