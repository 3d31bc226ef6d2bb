"""The `memory` engine: one node, its state in this process (the default of `make run`).

KV is a dictionary behind the `kv.*` spans (server/kv/service.py with no mesh),
chat history lives in the hub's rooms, and there are no other nodes.
"""

from __future__ import annotations

import time
from typing import Any

import trio
from opentelemetry import trace

from server.engine.base import ChatBus, PeerError
from server.kv.service import KV
from server.kv.store import Store
from server.settings import Settings
from tracing.metrics import Metrics


class MemoryEngine:
    kind = "memory"

    def __init__(self, settings: Settings, *, name: str, http_url: str, tracer: trace.Tracer,
                 metrics: Metrics | None = None) -> None:
        self.name = name
        self.http_url = http_url
        self.store = Store(name, max_keys=settings.max_keys)
        self.kv = KV(self.store, tracer, metrics=metrics)
        self.chat: ChatBus | None = None

    def live_members(self) -> list[str]:
        return [self.name]

    def describe_members(self) -> list[dict[str, object]]:
        return [{"name": self.name, "status": "up", "self": True, "http_url": self.http_url,
                 "last_seen": time.time()}]

    def advertise(self, http_url: str) -> None:
        self.http_url = http_url

    def trace_peers(self) -> list[str]:
        return []

    async def peer_spans(self, peer: str, trace_id: str, within_s: float) -> dict[str, Any]:
        raise PeerError("a single node has no peers")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()
