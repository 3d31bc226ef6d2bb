"""A lean WebSocket client for load generation: stdlib sockets, no event loop library.

Just enough RFC 6455 for benchmarks: the opening handshake, masked client text
frames, and a parser for the server's (unmasked) frames that works on a byte
buffer so one `recv` can yield many frames. Connections are opened in batches
(blocking connect + handshake), then switched to non-blocking for an epoll loop.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
from collections.abc import Sequence

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class HandshakeError(RuntimeError):
    pass


class WsConn:
    """One client connection: its socket and the bytes received but not yet parsed."""

    __slots__ = ("buf", "close_code", "fragment_op", "fragments", "sock")

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.buf = bytearray(leftover)
        self.fragments: list[bytes] = []  # payloads of an unfinished fragmented message
        self.fragment_op = OP_TEXT
        self.close_code: int | None = None

    def fileno(self) -> int:
        return self.sock.fileno()

    def send_text(self, text: str) -> None:
        self.sock.sendall(encode_frame(OP_TEXT, text.encode("utf-8")))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A final, masked client frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    if not n:
        return head + mask
    repeated = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + mask + masked


def parse_frames(conn: WsConn) -> list[tuple[int, bytes]]:
    """Take every complete message out of conn.buf: [(opcode, payload)].

    Fragmented messages are reassembled; control frames are returned as they come.
    """
    buf = conn.buf
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n, at = b1 & 0x7F, pos + 2
        if n == 126:
            if end - at < 2:
                break
            n, at = int.from_bytes(buf[at:at + 2], "big"), at + 2
        elif n == 127:
            if end - at < 8:
                break
            n, at = int.from_bytes(buf[at:at + 8], "big"), at + 8
        mask = b""
        if b1 & 0x80:
            if end - at < 4:
                break
            mask, at = bytes(buf[at:at + 4]), at + 4
        if end - at < n:
            break
        payload = bytes(buf[at:at + n])
        if mask:
            repeated = (mask * (n // 4 + 1))[:n]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
        pos = at + n
        opcode, fin = b0 & 0x0F, b0 & 0x80
        if opcode >= OP_CLOSE:
            out.append((opcode, payload))
        elif not fin:
            if opcode != OP_CONT:
                conn.fragment_op = opcode
            conn.fragments.append(payload)
        elif opcode == OP_CONT:
            out.append((conn.fragment_op, b"".join(conn.fragments) + payload))
            conn.fragments.clear()
        else:
            out.append((opcode, payload))
    if pos:
        del buf[:pos]
    return out


def _request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return req, accept


def _finish(sock: socket.socket, accept: bytes) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise HandshakeError("connection closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if not lines[0].startswith(b"HTTP/1.1 101"):
        raise HandshakeError(f"handshake refused: {lines[0].decode(errors='replace')}")
    if not any(line.lower() == b"sec-websocket-accept: " + accept.lower() for line in lines[1:]):
        raise HandshakeError("bad Sec-WebSocket-Accept")
    return rest


def open_many(host: str, port: int, paths: Sequence[str], *, batch: int = 50,
              rcvbuf: int | None = None, timeout: float = 15.0) -> list[WsConn]:
    """Open one connection per path, `batch` handshakes in flight at a time.

    Returns non-blocking connections; closes what it opened if any fails.
    """
    conns: list[WsConn] = []
    opened: list[socket.socket] = []
    try:
        for start in range(0, len(paths), batch):
            pending: list[tuple[socket.socket, bytes]] = []
            for path in paths[start:start + batch]:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                opened.append(sock)
                if rcvbuf is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.settimeout(timeout)
                sock.connect((host, port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                req, accept = _request(host, port, path)
                sock.sendall(req)
                pending.append((sock, accept))
            for sock, accept in pending:
                rest = _finish(sock, accept)
                sock.setblocking(False)
                conns.append(WsConn(sock, rest))
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return conns


def close_all(conns: Sequence[WsConn]) -> None:
    for c in conns:
        c.close()
