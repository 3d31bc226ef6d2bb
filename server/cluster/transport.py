"""How peer links reach the network: TCP here, in-memory streams in simulation tests.

The links code only needs a listener for its own cluster address and a byte
stream to a peer's address; trio-websocket runs on top of either (its
WebSocketServer is what `serve_websocket` runs over TCP listeners).
"""

from __future__ import annotations

import socket
from typing import Protocol

import trio
from trio_websocket import Endpoint


class Transport(Protocol):
    async def open_listener(self, address: str) -> tuple[trio.abc.Listener[trio.abc.Stream], str]:
        """A listener on HOST:PORT and the address it really got (port 0 is resolved)."""
        ...

    async def open_stream(self, address: str) -> trio.abc.Stream:
        """A connected byte stream to a peer's HOST:PORT; raises OSError when unreachable."""
        ...


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class TcpTransport:
    async def open_listener(self, address: str) -> tuple[trio.abc.Listener[trio.abc.Stream], str]:
        host, port = split_address(address)
        listeners = await trio.open_tcp_listeners(port, host=host)
        listener = listeners[0]
        for extra in listeners[1:]:  # one address family is enough for a peer port
            await extra.aclose()
        bound = listener.socket.getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        return listener, f"{shown}:{bound[1]}"

    async def open_stream(self, address: str) -> trio.abc.Stream:
        host, port = split_address(address)
        return await trio.open_tcp_stream(host, port)


class BoundTcpTransport(TcpTransport):
    """TCP, listening on a socket bound (and listening) before the node started: a
    worker's cluster port, bound by the `--workers` supervisor and inherited, or
    claimed by a Hypercorn worker at import (server/worker_plan.py). The address
    asked for is the one that socket has, so it is not bound again."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    async def open_listener(self, address: str) -> tuple[trio.abc.Listener[trio.abc.Stream], str]:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        host, port = self._sock.getsockname()[:2]
        return listener, f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PreAuthStream(trio.abc.Stream):
    """A peer's byte stream that yields at most `budget` bytes until lift() is called.

    Peer links run over this so an unauthenticated peer cannot make the node buffer
    more than `budget` bytes: reads are clamped to what is left, so nothing past it
    is even taken from the socket. Once it is spent the stream reports end of
    stream (`exhausted` is set): trio-websocket then ends the connection as
    abnormally closed (1006), without a close frame. The handshake lifts the
    budget once the peer has proved it holds the cluster secret.
    """

    def __init__(self, stream: trio.abc.Stream, budget: int) -> None:
        self.stream = stream
        self.remaining: int | None = budget
        self.exhausted = False

    def lift(self) -> None:
        self.remaining = None

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.remaining is None:
            return await self.stream.receive_some(max_bytes)
        if self.remaining <= 0:
            self.exhausted = True
            await trio.lowlevel.checkpoint()
            return b""
        data = await self.stream.receive_some(min(max_bytes or self.remaining, self.remaining))
        if self.remaining is not None:  # lift() may have run while this read waited
            self.remaining -= len(data)
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def remote_address(stream: trio.abc.Stream) -> str:
    """Who is at the other end, as trio-websocket shows it (`WebSocketConnection.remote`)."""
    try:
        if isinstance(stream, trio.SocketStream):
            host, port, *_ = stream.socket.getpeername()
            return str(Endpoint(host, port, False))
        return repr(stream)
    except Exception:
        return "?"
