"""valkey_url parsing, without the client library (settings validate with it)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from server.errors import ConfigError
from server.ports import host_port

SCHEMES = ("redis", "rediss", "valkey", "valkeys")


@dataclass(frozen=True)
class ServerURL:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)


def parse_url(url: str) -> ServerURL:
    """redis://[user:password@]HOST[:PORT][/DB]; ConfigError naming what is wrong
    (never echoing the password)."""
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.hostname or ''}"
    if parts.scheme not in SCHEMES:
        raise ConfigError(f"valkey_url: expected redis://HOST:PORT[/DB] (or rediss://), got {shown!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"valkey_url: bad port in {shown}") from None
    if not parts.hostname:
        raise ConfigError(f"valkey_url: no host in {shown}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"valkey_url: the path must be a database number, got {path!r}")
    return ServerURL(parts.hostname, port, int(path or 0),
                     unquote(parts.username) if parts.username else None,
                     unquote(parts.password) if parts.password else None,
                     parts.scheme in ("rediss", "valkeys"))
