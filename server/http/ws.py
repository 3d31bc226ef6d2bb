"""`/ws`: the WebSocket endpoint, as a plain ASGI handler in front of Quart.

Served directly rather than through Quart's websocket machinery, which puts
every inbound frame through a signal and an extra channel hop, and hides the
close code a client sent. Each connection is read (client frames -> requests) in
the task Hypercorn runs it in; a writer task, the only one that awaits the socket,
runs in the connection's nursery while frames are queued (the broadcaster and the
node's pinger may write a frame without awaiting: server/http/direct_send.py).

Two protocols share the endpoint:
- plain text (the original): `/ws?username=NAME`, one room `default`, a text
  frame is chat text; others receive `{"user","text","timestamp"}`.
- JSON (`webserver.v1` subprotocol or `?protocol=json`): see ws_protocol.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, WebsocketAcceptEvent, WebsocketScope

from server.chat.connection import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED_DATA,
    Connection,
    Protocol,
    Wake,
)
from server.chat.hub import Hub, encode
from server.errors import RequestError
from server.http.direct_send import DirectSocket
from server.http.ws_protocol import FrameRefused, JsonSession, check_chat_text, error_frame, parse_request
from server.validation import check_username
from tracing import spans as S
from tracing.websocket import ConnectionSpans, request_refused

if TYPE_CHECKING:
    from server.node import Node

log = logging.getLogger(__name__)

SUBPROTOCOL = "webserver.v1"
DEFAULT_ROOM = "default"
# Frames the writer sends as one batch frame at most (JSON protocol).
MAX_BATCH = 64
_OUT = {"direction": "out"}
# websocket.connections' attributes, one dict per protocol rather than one per connection.
_PROTOCOL_ATTRS = {p: {S.WS_SUBPROTOCOL: p.value} for p in Protocol}



def _query(scope: WebsocketScope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _headers(scope: WebsocketScope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _peer(scope: WebsocketScope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "unknown"


async def websocket_endpoint(node: Node, scope: WebsocketScope, receive: ASGIReceiveCallable,
                             send: ASGISendCallable) -> None:
    event = await receive()
    if event["type"] != "websocket.connect":
        return
    query = _query(scope)
    subprotocols: Iterable[str] = scope.get("subprotocols") or ()
    use_json = SUBPROTOCOL in subprotocols or query.get("protocol") == "json"
    accept: WebsocketAcceptEvent = {"type": "websocket.accept", "subprotocol": None, "headers": ()}
    if SUBPROTOCOL in subprotocols:
        accept["subprotocol"] = SUBPROTOCOL
    refusal: tuple[int, str] | None = None
    try:
        username = check_username(query.get("username"))
    except RequestError as exc:
        refusal = (CLOSE_POLICY_VIOLATION, f"username {exc.message}")
    if query.get("protocol") not in (None, "json", "text"):
        refusal = (CLOSE_POLICY_VIOLATION, "protocol must be 'json' or 'text'")
    elif node.shutting_down:
        refusal = (CLOSE_GOING_AWAY, "server shutting down")
    if refusal is not None:
        # Accept, then close: a refused handshake could not say why.
        await send(accept)
        await send({"type": "websocket.close", "code": refusal[0], "reason": refusal[1]})
        return
    s = node.settings
    conn = Connection(username, Protocol.JSON if use_json else Protocol.TEXT,
                      queue_size=s.outbound_queue_size, slow_timeout=s.slow_consumer_timeout,
                      peer=_peer(scope), history_reserve=0 if use_json else s.history_size)
    await WebSocketSession(node, conn, scope, send, receive).run(accept)


class WebSocketSession:
    # Slots: one of these lives as long as its connection (issue 13: memory per idle WebSocket).
    __slots__ = (
        "_flush_seconds",
        "_nursery",
        "_protocol_attr",
        "_requests",
        "_writing",
        "close_code",
        "conn",
        "direct",
        "hub",
        "node",
        "receive",
        "send",
        "spans",
    )

    def __init__(self, node: Node, conn: Connection, scope: WebsocketScope, send: ASGISendCallable,
                 receive: ASGIReceiveCallable) -> None:
        self.node = node
        self.hub: Hub = node.hub
        self.conn = conn
        self.send = send
        self.receive = receive
        self.close_code: int | None = None
        self.spans = ConnectionSpans(
            node.tracer, peer=conn.peer, connection_id=conn.id, headers=_headers(scope),
            attributes={"websocket.subprotocol": conn.protocol.value,
                        "websocket.username": conn.username})
        self._requests: JsonSession | None = None  # made by the first JSON request
        self._protocol_attr = _PROTOCOL_ATTRS[conn.protocol]
        self.direct: DirectSocket | None = None
        # A frame's rest waits for the client as long as the kernel would let it ack
        # nothing (tcp_user_timeout), and at least as long as the slow-consumer policy.
        self._flush_seconds = max(node.settings.slow_consumer_timeout, node.settings.tcp_user_timeout)
        self._nursery: trio.Nursery | None = None
        self._writing = False  # a writer task runs (it ends once the queue is empty)

    async def run(self, accept: WebsocketAcceptEvent) -> None:
        error: BaseException | None = None
        try:
            self.hub.add(self.conn)
            self.node.metrics.ws_connections.add(1, self._protocol_attr)
            if self.conn.protocol is Protocol.TEXT:
                await self.hub.sync_history(DEFAULT_ROOM)
                # In `default` before the handshake completes, so a client never
                # misses a message sent after it is connected; the history is
                # queued in the same step, so it comes first and nothing twice.
                self.hub.join(self.conn, DEFAULT_ROOM)
                for message in self.hub.history(DEFAULT_ROOM):
                    self.conn.queue_nowait(Hub.encode_message(message, Protocol.TEXT))
            await self.send(accept)
            self.direct = self.conn.control = DirectSocket.attach(self.send)
            if self.direct is not None and self.direct.frames and self.node.settings.ws_direct_writes:
                self.conn.direct = self.direct
            self.spans.connected()
            # The reader runs in this task; a writer only while something is queued
            # (an idle connection has no task of its own but Hypercorn's and this one).
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.conn.on_queued = self._start_writer
                if self.conn.queued:  # the join history, or frames offered meanwhile
                    self._start_writer()
                await self._reader(nursery.cancel_scope)
        except Exception as exc:  # a server fault: record it, tell the client 1011
            error = exc
            log.exception("connection %s failed", self.conn.id)
            self._stop_direct()
            self.close_code = CLOSE_INTERNAL_ERROR
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await self.send({"type": "websocket.close", "code": CLOSE_INTERNAL_ERROR,
                                 "reason": "internal server error"})
        finally:
            self.hub.remove(self.conn)
            self._stop_direct()
            self.node.metrics.ws_connections.add(-1, self._protocol_attr)
            self.conn.on_queued = None
            self.conn.close_queue()
            self.spans.closed(self.close_code, error,
                              self.conn.close_request[1] if self.conn.close_request else None)

    def _stop_direct(self) -> None:
        """No more direct writes; a frame left half written ends the socket (it cannot go on)."""
        self.conn.direct = self.conn.control = None
        if self.direct is not None:
            self.direct.abandon()

    # -- reading -------------------------------------------------------------
    async def _reader(self, cancel: trio.CancelScope) -> None:
        max_size = self.node.settings.ws_max_message_size
        while True:
            event = await self.receive()
            if event["type"] == "websocket.disconnect":
                # Hypercorn reports 1006 for any close the app did not start, so
                # the client's own code is unknown: note only who closed.
                cancel.cancel()
                return
            if event["type"] != "websocket.receive":
                continue
            text = event.get("text")
            if text is None:
                self.conn.request_close(CLOSE_UNSUPPORTED_DATA, "binary frames are not supported; send text")
                return
            size = len(text.encode("utf-8"))
            if size > max_size:
                self.conn.request_close(
                    CLOSE_TOO_BIG, f"message is {size} bytes; the limit is {max_size}")
                return
            if self.conn.protocol is Protocol.TEXT:
                await self._plain(text, size)
            else:
                await self._json(text, size)
            if self.conn.close_request is not None:
                return

    async def _plain(self, text: str, size: int) -> None:
        self.node.metrics.ws_messages.add(1, {"direction": "in", S.WS_MESSAGE_TYPE: "text"})
        with self.spans.message("text", size) as span:
            try:
                # Refused like any bad text: the sender is told, nothing is broadcast.
                check_chat_text(text, self.node.settings.max_chat_text_bytes)
                await self.hub.publish(self.conn, DEFAULT_ROOM, text)
            except RequestError as exc:
                request_refused(span, exc.code, exc.describe())
                await self.conn.send_reply(encode({"error": exc.describe()}))

    async def _json(self, text: str, size: int) -> None:
        try:
            kind, request = parse_request(text)
        except FrameRefused as refused:
            exc = refused.error
            self.node.metrics.ws_messages.add(1, {"direction": "in", S.WS_MESSAGE_TYPE: "invalid"})
            with self.spans.message("invalid", size) as span:
                request_refused(span, exc.code, exc.describe())
                await self.conn.send_reply(error_frame(exc, None, refused.ref))
            return
        self.node.metrics.ws_messages.add(1, {"direction": "in", S.WS_MESSAGE_TYPE: kind})
        with self.spans.message(kind, size) as span:
            try:
                if self._requests is None:
                    self._requests = JsonSession(self.conn, self.hub, self.node.kv, self.node.settings)
                reply = await self._requests.handle(kind, request)
            except RequestError as exc:
                request_refused(span, exc.code, exc.describe())
                reply = error_frame(exc, kind, request.get("ref"))
            await self.conn.send_reply(reply)

    # -- writing -------------------------------------------------------------
    def _start_writer(self) -> None:
        """Connection.on_queued: a writer for what was just queued, unless one runs."""
        if self._writing or self._nursery is None:
            return
        try:
            self._nursery.start_soon(self._writer, self._nursery.cancel_scope)
        except RuntimeError:  # the nursery has closed: the connection is over
            return
        self._writing = True

    async def _writer(self, cancel: trio.CancelScope) -> None:
        try:
            await self._write_queued(cancel)
        finally:
            self._writing = False

    async def _write_queued(self, cancel: trio.CancelScope) -> None:
        """Write until the queue is empty (then return: the next frame starts a writer
        again) or the connection is to close (then close it)."""
        conn = self.conn
        batching = conn.protocol is Protocol.JSON
        while True:
            frames: list[str] = []
            taken = 0
            while len(frames) < MAX_BATCH:  # drain what is queued: one wake-up, one send
                try:
                    item = conn.take_nowait()
                except trio.WouldBlock:
                    break
                taken += 1
                if not isinstance(item, Wake):
                    frames.append(item)
            if not taken and conn.close_request is None and not (self.direct and self.direct.pending):
                return
            # A frame the broadcaster wrote in part goes out first (it holds the send lock).
            direct = self.direct
            if direct is not None and direct.pending and not await direct.flush(self._flush_seconds):
                self._stop_direct()
                cancel.cancel()  # the socket is closed: the connection is over
                return
            if conn.close_request is not None and conn.close_request[0] == CLOSE_POLICY_VIOLATION:
                break  # a slow consumer gets no more frames, only the close
            if batching and len(frames) > 1:
                await self.send({"type": "websocket.send", "bytes": None,
                                 "text": '{"type":"batch","frames":[' + ",".join(frames) + "]}"})
            else:
                for frame in frames:
                    await self.send({"type": "websocket.send", "bytes": None, "text": frame})
            if frames:
                self.node.metrics.ws_messages.add(len(frames), _OUT)
            conn.backlog -= taken
            conn.mark_drained()
            if conn.close_request is not None:
                break
        code, reason = conn.close_request
        self.close_code = code
        await self.send({"type": "websocket.close", "code": code, "reason": reason})
        cancel.cancel()
