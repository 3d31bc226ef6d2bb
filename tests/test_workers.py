"""Workers as cluster members (server/worker_plan.py): the engine, names, the Hypercorn
workers' claim of a cluster port, and the mesh listening on a socket bound beforehand."""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Iterator

import pytest
import trio

from server.cluster.transport import BoundTcpTransport
from server.errors import ConfigError
from server.ports import listening_socket
from server.settings import MAX_WORKERS, Settings, load_settings
from server.worker_plan import (
    CLUSTER_PORT_OFFSET,
    ClaimedWorker,
    claim_worker,
    worker_name,
    worker_settings,
    workers_engine,
)
from tests.e2e.processes import free_port_range

SECRET = "s" * 32


@pytest.fixture
def claims() -> Iterator[list[ClaimedWorker]]:
    """Claims made by a test, released after it."""
    made: list[ClaimedWorker] = []
    yield made
    for claim in made:
        claim.claim.close()


def test_workers_setting_from_the_environment_and_capped() -> None:
    assert load_settings(environ={"WEBSERVER_WORKERS": "4"}, config_path=None).workers == 4
    with pytest.raises(ConfigError, match=f"workers: at most {MAX_WORKERS}"):
        load_settings(environ={"WEBSERVER_WORKERS": str(MAX_WORKERS + 1)})
    with pytest.raises(ConfigError, match="workers: must be positive"):
        load_settings(environ={"WEBSERVER_WORKERS": "0"})


def test_memory_by_default_becomes_a_loopback_mesh_and_an_explicit_one_is_refused() -> None:
    auto = workers_engine(Settings())
    assert (auto.kind, auto.auto) == ("mesh", True) and "mesh engine on 127.0.0.1" in auto.note(2)
    with pytest.raises(ConfigError, match='engine: "memory" keeps one process\'s state'):
        workers_engine(Settings(engine="memory"))
    valkey = workers_engine(Settings(engine="valkey"))
    assert (valkey.kind, valkey.auto, valkey.note(2)) == ("valkey", False, "")


def test_names_are_the_node_name_or_the_http_address_and_the_index() -> None:
    assert worker_name(Settings(), "127.0.0.1", 4000, 2) == "webserver@127.0.0.1:4000-w2"
    assert worker_name(Settings(node_name="api"), "127.0.0.1", 4000, 1) == "api-w1"


def test_worker_settings_cap_quorums_unless_outside_peers() -> None:
    engine = workers_engine(Settings())
    mine = worker_settings(Settings(cluster_secret=SECRET, workers=2), 2, name="n-w1", engine=engine,
                           cluster_bind="127.0.0.1:4100", peers=["127.0.0.1:4101"])
    assert (mine.workers, mine.engine_kind, mine.peers) == (1, "mesh", "127.0.0.1:4101")
    assert (mine.replicas, mine.write_quorum, mine.read_quorum) == (2, 2, 2)
    outside = Settings(cluster_secret=SECRET, cluster_bind="127.0.0.1:4100", peers="10.0.0.2:4100")
    mine = worker_settings(outside, 2, name="n-w1", engine=workers_engine(outside),
                           cluster_bind="127.0.0.1:4100", peers=["127.0.0.1:4101"])
    assert mine.peers == "127.0.0.1:4101,10.0.0.2:4100" and mine.replicas == 3


def test_hypercorn_workers_claim_consecutive_ports_and_seed_each_other(claims: list[ClaimedWorker]) -> None:
    base = free_port_range(2)
    settings = Settings(workers=2, cluster_secret=SECRET, cluster_bind=f"127.0.0.1:{base}")
    claims.append(claim_worker(settings, "127.0.0.1", 4000))
    claims.append(claim_worker(settings, "127.0.0.1", 4000))
    one, two = (c.settings for c in claims)
    assert [c.index for c in claims] == [1, 2]
    assert (one.node_name, two.node_name) == ("webserver@127.0.0.1:4000-w1", "webserver@127.0.0.1:4000-w2")
    assert (one.cluster_bind, one.peers) == (f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}")
    assert (two.cluster_bind, two.peers) == (f"127.0.0.1:{base + 1}", f"127.0.0.1:{base}")
    assert all(c.cluster_socket is c.claim for c in claims)
    with pytest.raises(ConfigError, match=r"no free port in .*more Hypercorn workers"):
        claim_worker(settings, "127.0.0.1", 4000)


def test_hypercorn_workers_default_range_is_the_http_port_plus_100(claims: list[ClaimedWorker]) -> None:
    base = free_port_range(1)
    http_port = base - CLUSTER_PORT_OFFSET
    if http_port < 1:
        pytest.skip("the OS gave a port too low for an HTTP port 100 below it")
    claims.append(claim_worker(Settings(workers=2, cluster_secret=SECRET), "127.0.0.1", http_port))
    (mine,) = claims
    assert mine.settings.cluster_bind == f"127.0.0.1:{base}"
    assert "the memory engine keeps one process's state" in mine.note


def test_hypercorn_workers_on_valkey_hold_a_lock_refusing_connections(claims: list[ClaimedWorker]) -> None:
    base = free_port_range(2)
    settings = Settings(workers=2, engine="valkey")
    claims.append(claim_worker(settings, "127.0.0.1", base - CLUSTER_PORT_OFFSET))
    claims.append(claim_worker(settings, "127.0.0.1", base - CLUSTER_PORT_OFFSET))
    assert [c.settings.node_name.rpartition("-")[2] for c in claims] == ["w1", "w2"]
    assert all(c.cluster_socket is None and c.settings.engine_kind == "valkey" for c in claims)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", base), timeout=2):
        pass


def test_a_mesh_of_hypercorn_workers_needs_a_secret_and_a_port() -> None:
    with pytest.raises(ConfigError, match="cluster_secret: 2 Hypercorn workers form a mesh"):
        claim_worker(Settings(workers=2), "127.0.0.1", 4000)
    zero = dataclasses.replace(Settings(cluster_secret=SECRET, workers=2), cluster_bind="127.0.0.1:0")
    with pytest.raises(ConfigError, match="cluster_bind: under the Hypercorn CLI with workers > 1"):
        claim_worker(zero, "127.0.0.1", 4000)


async def test_bound_transport_serves_the_socket_bound_beforehand() -> None:
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    listener, address = await BoundTcpTransport(sock).open_listener("ignored:1")
    assert address == f"127.0.0.1:{port}"
    async with listener:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        async with client, await listener.accept() as served:
            await client.send_all(b"hi")
            assert await served.receive_some(2) == b"hi"
