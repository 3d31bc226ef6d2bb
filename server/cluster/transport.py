"""How peer links reach the network: TCP here, in-memory streams in simulation tests.

The links code only needs a listener for its own cluster address and a byte
stream to a peer's address; trio-websocket runs on top of either (its
WebSocketServer is what `serve_websocket` runs over TCP listeners).
"""

from __future__ import annotations

from typing import Protocol

import trio


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
