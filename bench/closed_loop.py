"""Closed-loop fan-out: the sender sends the next message once a watcher has the previous one.

The watcher is the receiver that joined last: a server that delivers in join order
reaches it last, so each message is out to everyone before the next one is sent.
Latency (receive time - send time, CLOCK_MONOTONIC) is taken on the watcher and on
`samples` receivers spread over the room, read as soon as epoll reports them; every
other receiver is drained in bulk every `drain_every` messages (one big `recv`, a
regex over the bytes), which keeps the client's cost per delivery far below the
server's, so one client core can measure a server doing a few hundred thousand
deliveries per second. At the end every receiver must have had every message of the
phase exactly once and in order: `lost` and `out_of_order` count what did not.
"""

from __future__ import annotations

import re
import select
import socket
import time
from dataclasses import dataclass, field

from bench.report import percentile
from bench.ws_client import WsConn

_RECV = 262144


@dataclass
class ClosedPhase:
    kind: str
    count: int
    receivers: int
    sent: int = 0
    first_send_ns: int = 0
    watcher_done_ns: int = 0  # the watcher got the last message
    delivered: int = 0  # in-order first deliveries counted at all receivers
    out_of_order: int = 0  # a sequence number seen twice or early (duplicate or gap)
    latencies_ns: list[int] = field(default_factory=list)
    stalled: bool = False

    @property
    def seconds(self) -> float:
        return max(1e-9, (self.watcher_done_ns - self.first_send_ns) / 1e9)

    @property
    def rate(self) -> float:
        """Delivered messages per second (each message reaches `receivers` members)."""
        return self.delivered / self.seconds

    @property
    def lost(self) -> int:
        return self.count * self.receivers - self.delivered

    def latency_ms(self, q: float) -> float:
        return percentile(sorted(self.latencies_ns), q) / 1e6


class _Receiver:
    __slots__ = ("conn", "next_seq", "tail")

    def __init__(self, conn: WsConn) -> None:
        self.conn = conn
        self.next_seq = 0
        self.tail = b""


class ClosedLoop:
    def __init__(self, sender: WsConn, receivers: list[WsConn], tag: str, *,
                 samples: int = 20, drain_every: int = 8) -> None:
        self.sender = sender
        self.tag = tag
        self.drain_every = drain_every
        self._all = [_Receiver(c) for c in receivers]
        self.watcher = self._all[-1]
        step = max(1, len(receivers) // max(1, samples))
        prompt = {*range(0, len(receivers) - 1, step), len(receivers) - 1}
        self._prompt = {self._all[i].conn.fileno(): self._all[i] for i in sorted(prompt)}
        self._bulk = [r for i, r in enumerate(self._all) if i not in prompt]
        self._ep = select.epoll()
        for fd in self._prompt:
            self._ep.register(fd, select.EPOLLIN)
        sender.sock.settimeout(10)
        self._buf = bytearray(_RECV)
        self._view = memoryview(self._buf)

    def close(self) -> None:
        self._ep.close()

    def _read(self, r: _Receiver, phase: ClosedPhase, pattern: re.Pattern[bytes],
              timed: bool) -> None:
        """Everything the socket holds now: count this phase's messages in order."""
        sock: socket.socket = r.conn.sock
        while True:
            try:
                size = sock.recv_into(self._view)
            except (BlockingIOError, InterruptedError):
                return
            if not size:
                return
            data = r.tail + self._buf[:size]
            now = time.monotonic_ns()
            end = 0
            for m in pattern.finditer(data):
                seq = int(m.group(1))
                if seq == r.next_seq:
                    r.next_seq += 1
                    phase.delivered += 1
                else:
                    phase.out_of_order += 1
                    r.next_seq = max(r.next_seq, seq + 1)
                if timed:
                    phase.latencies_ns.append(now - int(m.group(2)))
                end = m.end()
            # Keep what could be the start of a message split across two reads.
            r.tail = bytes(data[max(end, len(data) - 256):])
            if size < _RECV:
                return

    def _drain_bulk(self, phase: ClosedPhase, pattern: re.Pattern[bytes]) -> None:
        for r in self._bulk:
            self._read(r, phase, pattern, False)

    def run(self, kind: str, count: int, *, stall_s: float = 5.0, finish_s: float = 10.0
            ) -> ClosedPhase:
        """Send `count` messages, each once the watcher has the one before."""
        phase = ClosedPhase(kind, count, len(self._all))
        for r in self._all:
            r.next_seq, r.tail = 0, b""
        pattern = re.compile(re.escape(f"{self.tag}:{kind}:".encode()) + rb"(\d+):(\d+):")
        watcher = self.watcher
        for seq in range(count):
            now = time.monotonic_ns()
            if not phase.first_send_ns:
                phase.first_send_ns = now
            self.sender.send_text(f"{self.tag}:{kind}:{seq}:{now}:")
            phase.sent += 1
            deadline = time.monotonic() + stall_s
            while watcher.next_seq <= seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    phase.stalled = True
                    break
                for fd, _ in self._ep.poll(left):
                    self._read(self._prompt[fd], phase, pattern, True)
            if phase.stalled:
                break
            if (seq + 1) % self.drain_every == 0:
                self._drain_bulk(phase, pattern)
        phase.watcher_done_ns = time.monotonic_ns()
        # The rest of the room: every member should have every message by now, or soon.
        deadline = time.monotonic() + finish_s
        while any(r.next_seq < phase.sent for r in self._all) and time.monotonic() < deadline:
            self._drain_bulk(phase, pattern)
            for r in self._prompt.values():
                self._read(r, phase, pattern, True)
            time.sleep(0.01)
        return phase
