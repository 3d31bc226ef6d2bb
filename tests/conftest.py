from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.node import RunningNode
from tests.harness import start_node


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def node(nursery: trio.Nursery, exporter: InMemorySpanExporter) -> AsyncIterator[RunningNode]:
    running = await start_node(nursery, exporter)
    yield running
    running.stop()


@pytest.fixture
async def http(node: RunningNode) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
        yield client
