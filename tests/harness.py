"""Run real nodes inside a test's trio.run: Hypercorn on a loopback port 0, spans
going to an injected in-memory exporter (never the global provider)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from server.serve import RunningNode, serve_node
from server.settings import load_settings


def make_provider(exporter: InMemorySpanExporter, sampler: Sampler | None = None) -> TracerProvider:
    """sampler: None is the SDK's choice (OTEL_TRACES_SAMPLER, else parent-based always-on)."""
    provider = TracerProvider(shutdown_on_exit=False, sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def start_node(nursery: trio.Nursery, exporter: InMemorySpanExporter,
                     **overrides: Any) -> RunningNode:
    return await start_sampled_node(nursery, exporter, None, **overrides)


async def start_sampled_node(nursery: trio.Nursery, exporter: InMemorySpanExporter,
                             sampler: Sampler | None, **overrides: Any) -> RunningNode:
    """start_node with the provider's sampler chosen (None: the SDK's choice)."""
    settings = load_settings(environ={}, overrides={"bind": "127.0.0.1:0", **overrides})
    running: RunningNode = await nursery.start(serve_node, settings, make_provider(exporter, sampler))
    return running


def ws_url(node: RunningNode, query: str = "") -> str:
    return node.url.replace("http://", "ws://") + "/ws" + (f"?{query}" if query else "")


@asynccontextmanager
async def json_client(node: RunningNode, username: str = "alice") -> AsyncIterator[JsonClient]:
    async with open_websocket_url(ws_url(node, f"username={username}"),
                                  subprotocols=["webserver.v1"]) as ws:
        yield JsonClient(ws)


class JsonClient:
    """A JSON-protocol client that unpacks batch frames and keeps pushes apart from replies."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.pending: list[dict[str, Any]] = []
        self._ref = 0

    async def _first(self, matches: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first queued or arriving frame that matches; batch frames are unpacked."""
        with trio.fail_after(timeout):
            while True:
                for i, frame in enumerate(self.pending):
                    if matches(frame):
                        return self.pending.pop(i)
                frame = json.loads(await self.ws.get_message())
                self.pending.extend(frame["frames"] if frame.get("type") == "batch" else [frame])

    async def next_frame(self, timeout: float = 5) -> dict[str, Any]:
        return await self._first(lambda frame: True, timeout)

    async def request(self, kind: str, **fields: Any) -> dict[str, Any]:
        self._ref += 1
        ref = f"r{self._ref}"
        await self.ws.send_message(json.dumps({"type": kind, "ref": ref, **fields}))
        return await self.reply(ref)

    async def reply(self, ref: str) -> dict[str, Any]:
        """The reply carrying ref; pushes that arrive first stay queued."""
        return await self._first(lambda frame: frame.get("ref") == ref, 5)

    async def push(self, kind: str, timeout: float = 5) -> dict[str, Any]:
        """The next pushed frame of a type (message, presence, error)."""
        return await self._first(lambda frame: frame.get("type") == kind and "ref" not in frame, timeout)


def close_reason(exc: ConnectionClosed) -> tuple[int, str]:
    assert exc.reason is not None
    return exc.reason.code, exc.reason.reason or ""


def spans_named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one_span(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = spans_named(spans, name)
    assert len(found) == 1, f"expected one {name!r} span, got {[s.name for s in spans]}"
    return found[0]


async def wait_for_spans(exporter: InMemorySpanExporter, name: str, count: int = 1,
                         timeout: float = 5) -> list[ReadableSpan]:
    """Spans end in other tasks (the broadcaster, connection teardown): poll briefly."""
    with trio.fail_after(timeout):
        while len(found := spans_named(exporter.get_finished_spans(), name)) < count:
            await trio.sleep(0.01)
    return found
