"""Ports and addresses: free TCP ports (for the local cluster, tests and benchmarks),
listening sockets bound ahead of the node that serves them (workers' cluster ports),
and HOST:PORT / URL formatting with IPv6 hosts in brackets."""

from __future__ import annotations

import socket


def free_ports(host: str = "127.0.0.1", count: int = 1) -> list[int]:
    """count distinct ports that were free on host a moment ago (all held while choosing,
    so they differ; closed again before returning, so a race with another process remains)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = [socket.socket(family, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def host_port(host: str, port: int) -> str:
    """HOST:PORT, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(host: str, port: int) -> str:
    return f"http://{host_port(host, port)}"


def free_port(host: str = "127.0.0.1") -> int:
    """One port that was free on host a moment ago."""
    return free_ports(host, 1)[0]


def listening_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to host:port and listening, inheritable (for a child process).
    Listening at once is what makes it a claim: with SO_REUSEADDR two sockets that are
    only bound may share a port, but nothing binds beside a listening one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock
