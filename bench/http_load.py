"""HTTP load generators: `wrk` when installed, else a lean Python keep-alive client.

Both hold several HTTP/1.1 keep-alive connections, each with one request in
flight at a time (no pipelining), for a fixed duration, and return what they
completed. The caller pins them to the load generator's core.
"""

from __future__ import annotations

import re
import select
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench.procs import pinned


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int  # non-2xx answers, socket errors, timeouts
    seconds: float
    tool: str

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_SOCKET = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def run_wrk(url: str, *, seconds: float, connections: int, threads: int, cpu: int | None) -> LoadResult:
    wrk = wrk_path()
    if wrk is None:
        raise RuntimeError("wrk is not installed")
    argv = pinned(cpu, [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                        "--timeout", "5s", url])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    out = done.stdout
    total = _WRK_TOTAL.search(out)
    rate = _WRK_RATE.search(out)
    if total is None or rate is None:
        raise RuntimeError(f"cannot read wrk output:\n{out}\n{done.stderr}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    errors = 0
    if m := _WRK_NON2XX.search(out):
        errors += int(m.group(1))
    if m := _WRK_SOCKET.search(out):
        errors += sum(int(g) for g in m.groups())
    return LoadResult(int(total.group(1)), errors, elapsed, "wrk")


class _Conn:
    __slots__ = ("buf", "sock", "want")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.want = -1  # total bytes of the response being read, once its head is in


def run_python(url: str, *, seconds: float, connections: int) -> LoadResult:
    """Keep-alive GETs over `connections` sockets from one epoll loop, for `seconds`."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               "User-Agent: bench\r\n\r\n").encode()
    ep = select.epoll()
    conns: dict[int, _Conn] = {}
    for _ in range(connections):
        s = socket.create_connection((host, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        conns[s.fileno()] = _Conn(s)
        ep.register(s.fileno(), select.EPOLLIN)
    done = errors = 0
    started = time.monotonic()
    deadline = started + seconds
    try:
        for c in conns.values():
            c.sock.send(request)
        while (now := time.monotonic()) < deadline:
            for fd, _ in ep.poll(min(0.2, deadline - now)):
                c = conns[fd]
                chunk = c.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("server closed a keep-alive connection")
                c.buf += chunk
                while True:
                    if c.want < 0:
                        end = c.buf.find(b"\r\n\r\n")
                        if end < 0:
                            break
                        head = bytes(c.buf[:end]).lower()
                        m = re.search(rb"content-length:\s*(\d+)", head)
                        c.want = end + 4 + (int(m.group(1)) if m else 0)
                        if not head.startswith((b"http/1.1 2", b"http/1.0 2")):
                            errors += 1
                    if len(c.buf) < c.want:
                        break
                    del c.buf[:c.want]
                    c.want = -1
                    done += 1
                    c.sock.send(request)
    finally:
        elapsed = time.monotonic() - started
        for c in conns.values():
            c.sock.close()
        ep.close()
    return LoadResult(done, errors, elapsed, "python")
