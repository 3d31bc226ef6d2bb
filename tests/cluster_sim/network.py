"""An in-memory network for cluster simulation tests.

`MemoryNetwork` implements the `server.cluster.transport.Transport` protocol
once per simulated node (`network.transport("n1:7000")`), so a whole cluster
runs inside one `trio.run`, typically on pytest-trio's `autojump_clock`.

Each simulated node has its own host name: "n1:7000" is host "n1", port 7000.
Faults are addressed by node name, host or HOST:PORT (all mean the host):

* `partition(a, b)`: streams between the two groups are reset (send raises
  `trio.BrokenResourceError`, receive raises it too) and new connections are
  refused, like a firewall that rejects. With `silent=True` packets are
  dropped instead: sends "succeed", nothing arrives, connects hang until the
  partition heals; a stream that lost bytes is reset on heal (TCP gave up).
* `isolate(node)`: a partition between that node and everyone else.
* `slow(a, b, delay_s)`: every send between a and b (both ways) and every
  connect sleeps delay_s first.
* `heal()`: removes every partition, isolation and slowdown.
* `crash(node)`: the node's process is gone: all its streams reset, its
  listeners vanish (their `accept()` never returns), its transports refuse
  everything. Cancel the node's tasks too; a restarted node gets a fresh
  `network.transport(...)`. `crash(node, power_loss=True)`: the whole machine
  went away, so nobody is told: connects to it hang, peers' sends into its
  old streams vanish and no FIN or RST arrives, until a new incarnation runs
  on that host, whose kernel answers the next such send with an RST.

A connect storm (more than `storm_limit` connects while simulated time stands
still) raises `ConnectStorm`: under the autojump clock a reconnect loop that
never sleeps would otherwise spin forever without time advancing.

Every random choice comes from `self.rng` (a `random.Random(seed)`).
"""

from __future__ import annotations

import errno
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio
import trio.testing

BACKLOG = 128
FIRST_EPHEMERAL_PORT = 49152
STORM_LIMIT = 500


class ConnectStorm(RuntimeError):
    """Too many connects without simulated time advancing: a reconnect loop that never sleeps."""


def host_of(node: str) -> str:
    """"n1:7000" -> "n1"; a bare name or host is returned as is."""
    host, sep, port = node.rpartition(":")
    return host.strip("[]") if sep and port.isdigit() else node


@dataclass(eq=False)
class Connection:
    """One simulated TCP connection between two hosts."""

    id: int
    dialer: str  # host that called open_stream
    listener: str  # host that accepted
    ends: list[SimStream] = field(default_factory=list)
    broken: bool = False
    dropped: bool = False  # bytes were lost in a silent partition: reset on heal
    lost_host: str | None = None  # this host lost power while the connection was open

    @property
    def hosts(self) -> tuple[str, str]:
        return self.dialer, self.listener

    def involves(self, host: str) -> bool:
        return host in self.hosts

    def reset(self) -> None:
        """Break the connection: every pending and later send/receive fails."""
        if self.broken:
            return
        self.broken = True
        for end in self.ends:
            end._interrupt()


class SimStream(trio.abc.Stream):
    """One end of a connection: a memory stream guarded by the connection's fault state."""

    def __init__(self, network: MemoryNetwork, connection: Connection, local: str, remote: str,
                 inner: trio.StapledStream[trio.testing.MemorySendStream,
                                           trio.testing.MemoryReceiveStream]) -> None:
        self.network = network
        self.connection = connection
        self.local = local
        self.remote = remote
        self._inner = inner
        self._closed = False
        self._receive_scope: trio.CancelScope | None = None
        self._send_scope: trio.CancelScope | None = None

    def __repr__(self) -> str:
        return f"<SimStream #{self.connection.id} {self.local}->{self.remote}>"

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self.connection.broken:
            raise trio.BrokenResourceError(f"connection {self.local}<->{self.remote} reset")

    def _interrupt(self) -> None:
        for scope in (self._receive_scope, self._send_scope):
            if scope is not None:
                scope.cancel()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check()
        with trio.CancelScope() as scope:
            self._send_scope = scope
            try:
                delay = self.network.delay_between(self.local, self.remote)
                if delay > 0:
                    await trio.sleep(delay)
                else:
                    await trio.lowlevel.checkpoint()
            finally:
                self._send_scope = None
        self._check()  # reset or closed while we slept
        lost = self.connection.lost_host
        if lost is not None and lost != self.local and self.network.host_is_up(lost):
            self.connection.reset()  # the rebooted kernel answers with an RST
            self._check()
        if lost is not None or self.network.dropping(self.local, self.remote):
            self.connection.dropped = True
            return
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        self._check()
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self._check()
        with trio.CancelScope() as scope:
            self._receive_scope = scope
            try:
                data = await self._inner.receive_some(max_bytes)
            finally:
                self._receive_scope = None
        if scope.cancelled_caught:  # only reset() cancels this scope
            raise trio.BrokenResourceError(f"connection {self.local}<->{self.remote} reset")
        return data

    def close(self) -> None:
        """Close this end at once: the peer's receive sees EOF, its send BrokenResourceError.

        Across a silent partition the FIN is lost: the peer notices nothing until heal().
        """
        if self._closed:
            return
        self._closed = True
        if self.connection.lost_host is not None or self.network.dropping(self.local, self.remote):
            self.connection.dropped = True  # the FIN is lost
        else:
            self._inner.send_stream.close()
        self._inner.receive_stream.close()
        self.network._end_closed(self)

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


class SimListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, network: MemoryNetwork, address: str, host: str) -> None:
        self.network = network
        self.address = address
        self.host = host
        self._send, self._receive = trio.open_memory_channel[SimStream](BACKLOG)
        self.closed = False
        self.crashed = False

    def __repr__(self) -> str:
        return f"<SimListener {self.address}>"

    def _offer(self, stream: SimStream) -> bool:
        try:
            self._send.send_nowait(stream)
            return True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False

    def _drain(self) -> None:
        """Reset every connection still waiting in the backlog."""
        while True:
            try:
                stream = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            stream.connection.reset()
            stream.close()

    async def accept(self) -> trio.abc.Stream:
        if self.closed:
            raise trio.ClosedResourceError("listener was closed")
        if self.crashed:
            await trio.sleep_forever()  # the process is gone; its tasks are being cancelled
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:  # pragma: no cover - we close the receive side, not the send side
            raise trio.ClosedResourceError("listener was closed") from None

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.network._unregister(self)
            self._drain()
            self._receive.close()
            self._send.close()
        await trio.lowlevel.checkpoint()


class SimTransport:
    """The Transport one node incarnation uses; dead after network.crash(node)."""

    def __init__(self, network: MemoryNetwork, host: str) -> None:
        self.network = network
        self.host = host
        self.dead = False

    def __repr__(self) -> str:
        return f"<SimTransport {self.host}{' (crashed)' if self.dead else ''}>"

    def _alive(self) -> None:
        if self.dead:
            raise OSError(errno.ENETDOWN, f"{self.host} has crashed")

    async def open_listener(self, address: str) -> tuple[trio.abc.Listener[trio.abc.Stream], str]:
        await trio.lowlevel.checkpoint()
        self._alive()
        return self.network._listen(self.host, address)

    async def open_stream(self, address: str) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self._alive()
        return await self.network._connect(self.host, address)


class MemoryNetwork:
    def __init__(self, seed: int | None = None, *, rng: random.Random | None = None,
                 storm_limit: int = STORM_LIMIT) -> None:
        self.rng = rng or random.Random(seed)
        self.storm_limit = storm_limit
        self._storm: tuple[float, int] = (-1.0, 0)  # (simulated time, connects at that time)
        self.listeners: dict[str, SimListener] = {}
        self._connections: dict[int, Connection] = {}  # by id: iteration order is creation order
        self.transports: list[SimTransport] = []
        self._ids = itertools.count(1)
        self._ports: dict[str, itertools.count[int]] = {}
        self._partitions: list[tuple[frozenset[str], frozenset[str], bool]] = []
        self._isolated: dict[str, bool] = {}  # host -> silent
        self._delays: dict[frozenset[str], float] = {}
        self._powered_off: set[str] = set()  # hosts whose machine vanished (connects hang)
        self._changed = trio.Event()
        self.connects = 0  # successful open_stream calls, for tests that count dials
        self.refused = 0

    @property
    def connections(self) -> list[Connection]:
        """Every connection not yet closed at both ends, oldest first."""
        return list(self._connections.values())

    # -- identities --------------------------------------------------------------
    def transport(self, host_address: str) -> SimTransport:
        """A Transport for the node living at host_address ("n1:7000" or "n1")."""
        transport = SimTransport(self, host_of(host_address))
        self.transports.append(transport)
        if transport.host in self._powered_off:  # the machine is back
            self._powered_off.discard(transport.host)
            self._notify()
        return transport

    # -- fault injection -----------------------------------------------------------
    def partition(self, group_a: Iterable[str], group_b: Iterable[str], *, silent: bool = False) -> None:
        """Cut every path between the two groups (names, hosts or addresses)."""
        a, b = frozenset(map(host_of, group_a)), frozenset(map(host_of, group_b))
        if a & b:
            raise ValueError(f"a node cannot be on both sides: {sorted(a & b)}")
        self._partitions.append((a, b, silent))
        self._apply()

    def isolate(self, node: str, *, silent: bool = False) -> None:
        """Cut every path between this node and every other node."""
        self._isolated[host_of(node)] = silent
        self._apply()

    def slow(self, a: str, b: str, delay_s: float) -> None:
        """Every send (and connect) between a and b sleeps delay_s first; 0 removes it."""
        key = frozenset((host_of(a), host_of(b)))
        if delay_s > 0:
            self._delays[key] = delay_s
        else:
            self._delays.pop(key, None)
        self._notify()

    def heal(self) -> None:
        """Remove every partition, isolation and slowdown; streams that lost bytes are reset."""
        self._partitions.clear()
        self._isolated.clear()
        self._delays.clear()
        for conn in self.connections:
            if conn.dropped and conn.lost_host is None:  # a powered-off host stays silent
                conn.reset()
        self._notify()

    def crash(self, node: str, *, power_loss: bool = False) -> None:
        """The node's process died: reset its streams, drop its listeners, kill its transports.

        power_loss: the machine vanished instead; its streams go silent rather than reset.
        """
        host = host_of(node)
        if power_loss:
            self._powered_off.add(host)
        for transport in self.transports:
            if transport.host == host:
                transport.dead = True
        self.transports = [t for t in self.transports if not t.dead]
        for address, listener in list(self.listeners.items()):
            if listener.host == host:
                del self.listeners[address]
                listener.crashed = True
                listener._drain()
        for conn in self.connections:
            if conn.involves(host):
                if power_loss:
                    conn.lost_host = host
                else:
                    conn.reset()
        self._notify()

    # -- queries -------------------------------------------------------------------
    def cut(self, x: str, y: str) -> bool | None:
        """None when x and y can talk; else whether the cut is silent (drops) or rejecting."""
        x, y = host_of(x), host_of(y)
        if x == y:
            return None
        modes = [silent for a, b, silent in self._partitions if (x in a and y in b) or (x in b and y in a)]
        modes += [self._isolated[h] for h in (x, y) if h in self._isolated]
        if not modes:
            return None
        return all(modes)  # a rejecting cut wins over a silent one

    def host_is_up(self, host: str) -> bool:
        """Some live incarnation runs on host."""
        return any(t.host == host for t in self.transports)

    def dropping(self, x: str, y: str) -> bool:
        return self.cut(x, y) is True

    def delay_between(self, x: str, y: str) -> float:
        return self._delays.get(frozenset((host_of(x), host_of(y))), 0.0)

    def streams_between(self, x: str, y: str) -> list[Connection]:
        pair = {host_of(x), host_of(y)}
        return [c for c in self.connections if set(c.hosts) == pair and not c.broken]

    # -- internals -----------------------------------------------------------------
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _apply(self) -> None:
        for conn in self.connections:
            if self.cut(*conn.hosts) is False:
                conn.reset()
        self._notify()

    def _listen(self, host: str, address: str) -> tuple[SimListener, str]:
        want, _, port_text = address.rpartition(":")
        if host_of(address) != host or not port_text.isdigit():
            raise OSError(errno.EADDRNOTAVAIL, f"{host} cannot listen on {address!r}")
        port = int(port_text)
        if port == 0:
            ports = self._ports.setdefault(host, itertools.count(FIRST_EPHEMERAL_PORT))
            while f"{want}:{port}" in self.listeners or port == 0:
                port = next(ports)
        bound = f"{want}:{port}"
        if bound in self.listeners:
            raise OSError(errno.EADDRINUSE, f"{bound} is already in use")
        listener = self.listeners[bound] = SimListener(self, bound, host)
        return listener, bound

    def _unregister(self, listener: SimListener) -> None:
        if self.listeners.get(listener.address) is listener:
            del self.listeners[listener.address]

    async def _connect(self, dialer: str, address: str) -> SimStream:
        target = host_of(address)
        now = trio.current_time()
        count = self._storm[1] + 1 if self._storm[0] == now else 1
        self._storm = (now, count)
        if count > self.storm_limit:
            raise ConnectStorm(f"{count} connects at t={now:.3f} without simulated time advancing "
                               f"(last: {dialer} -> {address}): a reconnect loop that never sleeps?")
        delay = self.delay_between(dialer, target)
        if delay > 0:
            await trio.sleep(delay)
        # SYNs are dropped: hang until healed / until the machine is back
        while self.cut(dialer, target) is True or target in self._powered_off:
            await self._changed.wait()
        listener = self.listeners.get(address)
        if listener is None or self.cut(dialer, target) is False:
            self.refused += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{dialer} -> {address}: connection refused")
        conn = Connection(next(self._ids), dialer, target)
        near, far = trio.testing.memory_stream_pair()
        mine = SimStream(self, conn, dialer, target, near)
        theirs = SimStream(self, conn, target, dialer, far)
        conn.ends += [mine, theirs]
        if not listener._offer(theirs):
            self.refused += 1
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"{dialer} -> {address}: backlog full")
        self._connections[conn.id] = conn
        self.connects += 1
        return mine

    def _end_closed(self, stream: SimStream) -> None:
        conn = stream.connection
        if all(end._closed for end in conn.ends):
            self._connections.pop(conn.id, None)
