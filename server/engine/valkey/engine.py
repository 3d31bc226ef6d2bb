"""The `valkey` engine: KV, chat between nodes, presence, history and membership in
a Valkey 7.2+/8 or Redis 7 server (standalone, Sentinel or Cluster).

Nodes never talk to each other: each talks to Valkey. What a node does when
Valkey is away: KV answers 503 (EngineDown) at once, chat keeps reaching this
node's members (other nodes' copies are lost, counted), `GET /nodes` shows the
others down, and the client reconnects with backoff, logging once each way.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any

import trio
from opentelemetry import trace

from server.engine.base import PeerError
from server.engine.valkey.chat import ValkeyChat
from server.engine.valkey.client import Client, ValkeyClient
from server.engine.valkey.keys import Keys
from server.engine.valkey.kv import ValkeyKV
from server.engine.valkey.members import NodeTable, heartbeat_json
from server.errors import EngineDown
from server.settings import Settings
from tracing.metrics import Metrics

log = logging.getLogger(__name__)


class ValkeyEngine:
    kind = "valkey"

    def __init__(self, settings: Settings, *, name: str, http_url: str, tracer: trace.Tracer,
                 metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.name = name
        self.http_url = http_url
        self.keys = Keys(settings.valkey_prefix)
        self.client = ValkeyClient(settings, tracer, node_name=name)
        self.kv = ValkeyKV(self.client, self.keys, tracer, node_name=name, metrics=metrics)
        self.ttl_ms = int(settings.failure_timeout * 1000)
        self.chat = ValkeyChat(self.client, self.keys, node_name=name, history_size=settings.history_size,
                               presence_ttl_ms=self.ttl_ms)
        self.table = NodeTable(name, http_url)
        if metrics is not None:
            metrics.observe("webserver.cluster.members", "{node}",
                            "Cluster members by status, self included.", self._member_counts)

    # -- membership -----------------------------------------------------------------
    def live_members(self) -> list[str]:
        return [self.name, *self.table.up_names()]

    def describe_members(self) -> list[dict[str, object]]:
        return self.table.describe("up" if self.client.is_healthy else "engine unreachable")

    def _member_counts(self) -> dict[tuple[tuple[str, str], ...], float]:
        up = len(self.table.up_names()) + 1
        return {(("status", "up"),): up, (("status", "down"),): len(self.table.nodes) + 1 - up}

    def advertise(self, http_url: str) -> None:
        self.http_url = self.table.self_url = http_url  # the next heartbeat writes it

    # -- traces from other nodes: asked over HTTP (nodes share no link) -----------------
    def trace_peers(self) -> list[str]:
        return [n for n, r in sorted(self.table.nodes.items()) if r.http_url]

    async def peer_spans(self, peer: str, trace_id: str, within_s: float) -> dict[str, Any]:
        record = self.table.nodes.get(peer)
        if record is None or not record.http_url:
            raise PeerError(f"no address known for {peer}")
        url = f"{record.http_url}/debug/traces/api/traces/{trace_id}?local=1"
        try:
            with trio.fail_after(within_s):
                return await trio.to_thread.run_sync(_get_json, url, within_s, abandon_on_cancel=True)
        except trio.TooSlowError:
            raise PeerError(f"{peer} did not answer within {within_s:g}s") from None
        except (OSError, ValueError) as exc:
            raise PeerError(f"{peer}: {exc}") from None

    # -- tasks ------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.client.run)
            await nursery.start(self.chat.run)
            nursery.start_soon(self._heartbeats)
            log.info("valkey engine: %s using %s (prefix %r)", self.name, self.client.describe(),
                     self.keys.prefix)
            task_status.started()

    async def _heartbeats(self) -> None:
        await self.client.connected.wait()
        while True:
            try:
                await self._beat()
            except EngineDown:
                for name in self.table.mark_all_down(trio.current_time()):
                    log.info("valkey engine: %s is down (engine unreachable)", name)
                    self.chat.forget_node(name)
            await trio.sleep(self.settings.heartbeat_interval)

    async def _beat(self) -> None:
        """Write this node's heartbeat, then read everyone's and their presence."""
        me = heartbeat_json(self.name, self.http_url)

        async def write(c: Client) -> tuple[set[str], bool]:
            async with c.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.node(self.name), me, px=self.ttl_ms)
                pipe.sadd(self.keys.nodes, [self.name])
                renewed = pipe.pexpire(self.keys.presence(self.name), self.ttl_ms)
                names = pipe.smembers(self.keys.nodes)
            return set(await names), bool(await renewed)

        names, renewed = await self.client.call("PIPELINE", write, batch_size=4, traced=False)
        others = sorted(n for n in names if n != self.name)
        heartbeats: dict[str, str | None] = {}
        presence: dict[str, dict[str, str]] = {}
        read_at = trio.current_time()
        if others:
            async def read(c: Client) -> tuple[list[Any], list[Any]]:
                async with c.pipeline(transaction=False) as pipe:
                    beats = pipe.mget([self.keys.node(n) for n in others])
                    hashes = [pipe.hgetall(self.keys.presence(n)) for n in others]
                return list(await beats), [await h for h in hashes]

            beats, hashes = await self.client.call("PIPELINE", read, batch_size=1 + len(others),
                                                   traced=False)
            heartbeats = dict(zip(others, beats, strict=True))
            presence = {n: dict(h) for n, h in zip(others, hashes, strict=True)}
        heartbeats[self.name] = me
        came_up, went_down, dropped = self.table.update(
            heartbeats, trio.current_time(), self.settings.member_removal_timeout)
        for name in came_up:
            log.info("valkey engine: %s is up", name)
        for name in went_down:
            log.info("valkey engine: %s is down (no heartbeat for %gs)", name, self.settings.failure_timeout)
            self.chat.forget_node(name)
        for name, fields in presence.items():
            if self.table.nodes.get(name) is not None and self.table.nodes[name].up:
                self.chat.replace_presence(name, fields, read_at)
        if dropped:
            await self.client.call("SREM", lambda c: c.srem(self.keys.nodes, dropped), traced=False)
        if not renewed:  # no hash: none yet, or Valkey lost it (restarted without AOF)
            await self.chat.restore_presence()


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    """One GET in a worker thread (the engine has no HTTP client of its own); a 404
    is a peer holding no span of the trace."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # a peer's own http_url
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {"spans": []}
        raise
    if not isinstance(body, dict):
        raise ValueError("malformed reply")
    return body
