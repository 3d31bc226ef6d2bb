"""The fan-out load: one sender and many receivers in one room, driven from one epoll loop.

Every chat text the sender sends is `TAG:KIND:SEQ:SEND_NS:` (plus padding), with
SEND_NS from CLOCK_MONOTONIC. Receivers count frames; a sample of receivers
also records latency = receive time - SEND_NS. The sender keeps at most
`window` messages in flight (sent but not yet delivered to every receiver),
sending in bursts of `burst`, so queues stay bounded and the server is
saturated without unbounded backlog (and without tripping slow-consumer drops).
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass, field

from bench.report import percentile
from bench.ws_client import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, WsConn, encode_frame, parse_frames

SENDER = -1


@dataclass
class Phase:
    """What one phase of messages measured."""

    kind: str
    count: int
    sent: int = 0
    deliveries: int = 0
    completed: int = 0
    first_send_ns: int = 0
    last_recv_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    stalled: bool = False

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.last_recv_ns - self.first_send_ns) / 1e9)

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    def latency_ms(self, q: float) -> float:
        return percentile(sorted(self.latencies_ns), q) / 1e6


class FanoutDriver:
    def __init__(self, sender: WsConn, receivers: list[WsConn], tag: str, *, samples: int = 50) -> None:
        self.sender = sender
        self.receivers = receivers
        self.tag = tag
        self._marker = b'"text":"' + tag.encode() + b":"
        self._index = {c.fileno(): i for i, c in enumerate(receivers)}
        self._index[sender.fileno()] = SENDER
        self._conns = {c.fileno(): c for c in [sender, *receivers]}
        step = max(1, len(receivers) // max(1, samples))
        self._sampled = set(range(0, len(receivers), step))
        self._ep = select.epoll()
        for fd in self._conns:
            self._ep.register(fd, select.EPOLLIN)
        sender.sock.settimeout(10)  # the sender writes blocking; it only ever sends a little
        self.closed: dict[int, int | None] = {}  # receiver index -> close code
        self._counts: list[int] = []  # deliveries per sequence number, this phase
        self.total_sent = 0  # messages the sender sent, all phases
        # recv_into one buffer: recv(n) allocates n bytes per call, which costs more than the syscall
        self._view = memoryview(bytearray(262144))

    def close(self) -> None:
        self._ep.close()

    def _send(self, phase: Phase, pad: str) -> None:
        now = time.monotonic_ns()
        if not phase.first_send_ns:
            phase.first_send_ns = now
        self.sender.send_text(f"{self.tag}:{phase.kind}:{phase.sent}:{now}:{pad}")
        phase.sent += 1
        self.total_sent += 1

    def _pump(self, phase: Phase, timeout: float, seen: set[int] | None = None) -> None:
        """Read whatever arrived within `timeout` seconds and account for it."""
        marker, mlen, kind = self._marker, len(self._marker), phase.kind.encode()
        view = self._view
        need = len(self.receivers)
        for fd, _ in self._ep.poll(timeout):
            conn = self._conns[fd]
            try:
                size = conn.sock.recv_into(view)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                size = 0
            who = self._index[fd]
            if not size:
                self._ep.unregister(fd)
                self.closed.setdefault(who, conn.close_code)
                continue
            conn.buf += view[:size]
            now = time.monotonic_ns()
            for op, payload in parse_frames(conn):
                if op == OP_TEXT:
                    at = payload.find(marker)
                    if at < 0 or who == SENDER or payload[at + mlen:at + mlen + 1] != kind:
                        continue
                    start = at + mlen + 2
                    colon = payload.index(b":", start)
                    seq = int(payload[start:colon])
                    phase.deliveries += 1
                    phase.last_recv_ns = now
                    if seen is not None:
                        seen.add(who)
                    elif seq < phase.count:
                        counts = self._counts
                        counts[seq] += 1
                        if counts[seq] == need:
                            phase.completed += 1
                        if who in self._sampled:
                            sent_ns = int(payload[colon + 1:payload.index(b":", colon + 1)])
                            phase.latencies_ns.append(now - sent_ns)
                elif op == OP_PING:
                    conn.sock.send(encode_frame(OP_PONG, payload))
                elif op == OP_CLOSE:
                    conn.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                    self.closed[who] = conn.close_code

    def sync(self, timeout: float = 20.0) -> None:
        """Send probes until every receiver has one: all are members of the room."""
        phase = Phase("s", 0)
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(seen) < len(self.receivers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(seen)} of {len(self.receivers)} receivers joined")
            self._send(phase, "")
            end = time.monotonic() + 0.25
            while len(seen) < len(self.receivers) and (left := end - time.monotonic()) > 0:
                self._pump(phase, left, seen)
        # Let the extra probes drain before measuring anything.
        end = time.monotonic() + 0.3
        while (left := end - time.monotonic()) > 0:
            self._pump(phase, left, seen)

    def run(self, kind: str, count: int, *, burst: int, window: int, pad: int = 0,
            stall_s: float = 5.0, limit_s: float = 120.0) -> Phase:
        """Send `count` messages and wait until each reached every receiver (or a stall)."""
        phase = Phase(kind, count)
        self._counts = [0] * count
        padding = "x" * pad
        need_all = len(self.receivers)
        started = last_progress = time.monotonic()
        progress = 0
        while phase.completed < count:
            if phase.sent < count and phase.sent - phase.completed + burst <= window:
                for _ in range(min(burst, count - phase.sent)):
                    self._send(phase, padding)
            self._pump(phase, 0.05)
            now = time.monotonic()
            if phase.deliveries != progress:
                progress, last_progress = phase.deliveries, now
            elif now - last_progress > stall_s or now - started > limit_s or len(self.closed) == need_all:
                phase.stalled = True
                break
        return phase
