"""The `mesh` engine: our own cluster (server/cluster/), no dependency outside this process.

Each node keeps its share of the keys (N replicas placed by rendezvous hashing,
W/R quorums: server/kv/service.py), forwards chat to the nodes with members
(server/chat/cluster_chat.py) and keeps membership by heartbeats over
authenticated peer links (server/cluster/mesh.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import trio
from opentelemetry import trace

from server.chat.cluster_chat import ClusterChat
from server.cluster.links import LinkError
from server.cluster.mesh import Mesh
from server.cluster.transport import Transport
from server.engine.base import PeerError
from server.kv.service import KV
from server.kv.store import Store
from server.settings import Settings
from tracing.metrics import Metrics
from tracing.span_buffer import TRACES_GET


class MeshEngine:
    kind = "mesh"

    def __init__(self, settings: Settings, *, name: str, http_url: str, tracer: trace.Tracer,
                 metrics: Metrics | None = None, transport: Transport | None = None,
                 rng: random.Random | None = None) -> None:
        self.name = name
        self.store = Store(name, max_keys=settings.max_keys)
        self.mesh = Mesh(settings, node_name=name, http_url=http_url, transport=transport, rng=rng,
                         metrics=metrics, tracer=tracer)
        self.kv = KV(self.store, tracer, replicas=settings.replicas,
                     write_quorum=settings.write_quorum, read_quorum=settings.read_quorum,
                     request_timeout=settings.cluster_request_timeout,
                     anti_entropy_interval=settings.anti_entropy_interval, metrics=metrics)
        self.kv.attach(self.mesh)
        self.chat = ClusterChat(self.mesh, history_timeout=min(1.0, settings.cluster_request_timeout))

    def serve_trace_lookups(self, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """Answer peers' TRACES_GET with this node's spans of a trace."""
        self.mesh.on(TRACES_GET, lambda peer, message: answer(message.body))

    def live_members(self) -> list[str]:
        return [self.name, *self.mesh.up_peers()]

    def describe_members(self) -> list[dict[str, object]]:
        return self.mesh.describe()

    def advertise(self, http_url: str) -> None:
        self.mesh.http_url = self.mesh.membership.self_url = http_url  # the next heartbeat says so

    def trace_peers(self) -> list[str]:
        # Every member, down ones too: a partial trace names who did not answer.
        return [n for n in self.mesh.membership.placement_names() if n != self.name]

    async def peer_spans(self, peer: str, trace_id: str, within_s: float) -> dict[str, Any]:
        try:
            return await self.mesh.request(peer, TRACES_GET, {"trace_id": trace_id}, within_s)
        except LinkError as exc:
            raise PeerError(str(exc)) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.mesh.run)
            await nursery.start(self.kv.run_handoff)
            task_status.started()


