"""Start real nodes of any engine inside a test's trio.run, so one suite can hold every
engine to the same behaviour (tests/test_engine_contract.py).

Each node has its own in-memory exporter (a span's node is the exporter it landed in)
and an HTTP client; timing is fast so membership converges in well under a second.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import trio
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.serve import RunningNode
from tests.harness import start_node

CLUSTER_SECRET = "engine-contract-secret-0123456789abcdef"
# Heartbeats fast enough that a test never waits long for membership.
FAST = {"heartbeat_interval": "0.2", "failure_timeout": "1.0"}
FAST_MESH = {**FAST, "cluster_bind": "127.0.0.1:0", "cluster_secret": CLUSTER_SECRET,
             "cluster_request_timeout": "2.0"}
CONVERGE_TIMEOUT = 10.0


@dataclass
class EngineNode:
    """One running node as the tests see it: the node, its spans, an HTTP client."""

    running: RunningNode
    exporter: InMemorySpanExporter
    http: httpx.AsyncClient

    @property
    def name(self) -> str:
        return self.running.node.name

    def spans(self, name: str | None = None, **attributes: Any) -> list[ReadableSpan]:
        """Finished spans (named name, when given) whose attributes include these."""
        return [s for s in self.exporter.get_finished_spans() if name in (None, s.name)
                and all((s.attributes or {}).get(k) == v for k, v in attributes.items())]


async def start_engine_nodes(nursery: trio.Nursery, kind: str, count: int,
                             **overrides: Any) -> list[EngineNode]:
    """`count` nodes named n1..nN of engine `kind`, returned once every node sees every other.

    memory: always exactly one node (count is ignored). mesh: node 1 is every other's
    seed. valkey: overrides must carry `valkey_url` (and `valkey_mode` for Cluster);
    `valkey_prefix` defaults to a fresh one, so tests sharing a server never meet.
    Stop them with `stop_engine_nodes`.
    """
    if kind == "memory":
        count, base = 1, {"engine": "memory"}
    elif kind == "mesh":
        base = {"engine": "mesh", **FAST_MESH}
    elif kind == "valkey":
        if "valkey_url" not in overrides:
            raise ValueError("the valkey engine needs valkey_url (the valkey_server fixture's url)")
        base = {"engine": "valkey", "valkey_prefix": f"contract{uuid.uuid4().hex[:12]}", **FAST}
    else:
        raise ValueError(f"unknown engine {kind!r}")
    nodes: list[EngineNode] = []
    seed = ""
    for i in range(count):
        exporter = InMemorySpanExporter()
        extra = {"peers": seed} if seed else {}
        running = await start_node(nursery, exporter, **{**base, "node_name": f"n{i + 1}", **extra,
                                                         **overrides})
        if kind == "mesh" and not seed:
            assert running.node.mesh is not None
            seed = running.node.mesh.address
        nodes.append(EngineNode(running, exporter, httpx.AsyncClient(base_url=running.url, timeout=10)))
    names = sorted(n.name for n in nodes)
    for n in nodes:
        await wait_until(lambda n=n: sorted(n.running.node.live_members()) == names,  # type: ignore[misc]
                         CONVERGE_TIMEOUT, f"{n.name} to see all of {names}")
    return nodes


async def stop_engine_nodes(nodes: list[EngineNode]) -> None:
    for n in nodes:
        await n.http.aclose()
        n.running.stop()


async def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll a condition that becomes true eventually; fail naming it after timeout."""
    with trio.move_on_after(timeout):
        while not (result := predicate()):
            await trio.sleep(0.02)
        return result
    raise AssertionError(f"waited {timeout:g}s for {what}")
