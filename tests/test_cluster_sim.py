"""Whole clusters of real `Node`s (mesh, replicated KV, cluster chat) inside one
trio.run: links are trio-websocket over the in-memory network of
tests/cluster_sim, time is the autojump clock, faults come from a printed seed
(replay with CLUSTER_SIM_SEED=... PYTHONHASHSEED=0)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from opentelemetry.trace import NoOpTracerProvider

from server.chat.connection import Connection, Protocol
from server.errors import Unavailable
from server.kv.clock import Timestamp
from server.kv.placement import replicas_for
from server.kv.store import Version
from server.node import Node
from server.settings import Settings
from tests.cluster_sim.harness import (
    NodeSpec,
    SimCluster,
    address_of,
    pick_seed,
    seed_trio_scheduler,
    start_watchdog,
    wait_until,
)
from tests.cluster_sim.network import MemoryNetwork

SECRET = "simulation-secret-0123456789abcdefghij"
REQUEST_TIMEOUT = 1.0
FAILURE_TIMEOUT = 2.0


async def node_factory(spec: NodeSpec, task_status: trio.TaskStatus[Node]) -> None:
    settings = dataclasses.replace(
        Settings(), node_name=spec.name, cluster_bind=spec.address, cluster_secret=SECRET,
        peers=",".join(spec.options.get("peers", [])), heartbeat_interval=0.5,
        failure_timeout=FAILURE_TIMEOUT, cluster_request_timeout=REQUEST_TIMEOUT,
        member_removal_timeout=spec.options.get("removal", 600.0)).validate()
    node = Node(settings, name=spec.name, tracer_provider=NoOpTracerProvider(),
                http_url=f"http://{spec.name}", transport=spec.transport, rng=spec.rng)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        task_status.started(node)


def converged(cluster: SimCluster[Node], names: list[str]) -> bool:
    return all(sorted(cluster[n].live_members()) == sorted(names) for n in names)


@asynccontextmanager
async def sim_cluster(count: int, **options: Any) -> AsyncIterator[tuple[SimCluster[Node], MemoryNetwork]]:
    seed = pick_seed()
    seed_trio_scheduler(seed)
    network = MemoryNetwork(seed)
    names = [f"n{i + 1}" for i in range(count)]
    async with trio.open_nursery() as nursery:
        start_watchdog(nursery, 120)
        cluster = SimCluster(nursery, network, node_factory)
        for name in names:  # each knows one seed: the rest is learnt by gossip
            await cluster.start(name, peers=[address_of("n1")] if name != "n1" else [], **options)
        await wait_until(lambda: converged(cluster, names), 30, what="membership")
        yield cluster, network
        nursery.cancel_scope.cancel()


def replicas(cluster: SimCluster[Node], key: str, names: list[str]) -> list[str]:
    return replicas_for(key, names, 3)


def entries_agree(cluster: SimCluster[Node], keys: list[str], names: list[str]) -> bool:
    """Every replica of every key holds the same entry (tombstones included)."""
    for key in keys:
        held = [cluster[n].store.entry(key) for n in replicas(cluster, key, names)]
        if held[0] is None or any(e != held[0] for e in held):
            return False
    return True


@pytest.mark.parametrize("count", [3, 5])
async def test_no_acknowledged_write_is_lost_while_n_minus_w_replicas_are_down(
        autojump_clock: trio.testing.MockClock, count: int) -> None:
    async with sim_cluster(count) as (cluster, network):
        names = cluster.names
        rng = network.rng
        victim = rng.choice(names)
        crash_at = rng.randrange(10, 30)
        acked: dict[str, Any] = {}
        for i in range(40):
            if i == crash_at:
                await cluster.crash(victim)
            key = f"k{rng.randrange(25)}"  # keys are overwritten too
            coordinator = rng.choice(cluster.names)
            try:
                await cluster[coordinator].kv.put(key, {"write": i})
            except Unavailable:
                continue  # not acknowledged: no promise
            acked[key] = {"write": i}
        assert len(acked) >= 15
        for name in cluster.names:  # the survivors
            for key, value in acked.items():
                read = await cluster[name].kv.get(key)
                assert read.entry is not None and read.entry.value == value, (name, key)
        # The crashed node comes back; hand-off and repair bring every replica level.
        await cluster.restart(victim)
        await wait_until(lambda: converged(cluster, names), 30, what="rejoin")
        await wait_until(lambda: entries_agree(cluster, list(acked), names), 30, what="replicas agree")


async def test_a_minority_answers_503_within_the_deadline_and_heals_to_one_value(
        autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster(3) as (cluster, network):
        n1, n2 = cluster["n1"], cluster["n2"]
        await n1.kv.put("doomed", "before")
        await n1.kv.put("kept", "before")
        network.partition(["n1"], ["n2", "n3"], silent=True)  # packets vanish: no fast failure
        started = trio.current_time()
        with pytest.raises(Unavailable):
            await n1.kv.put("kept", "minority write")
        assert trio.current_time() - started <= REQUEST_TIMEOUT + 0.05
        with pytest.raises(Unavailable):
            await n1.kv.get("kept")
        # The majority keeps working, deletes included.
        await n2.kv.put("kept", "majority write")
        assert await n2.kv.delete("doomed")
        network.heal()
        await wait_until(lambda: converged(cluster, ["n1", "n2", "n3"]), 30, what="heal")
        await wait_until(lambda: entries_agree(cluster, ["kept", "doomed"], ["n1", "n2", "n3"]), 30,
                         what="replicas agree after heal")
        for name in ("n1", "n2", "n3"):
            assert (await cluster[name].kv.get("doomed")).entry is None  # the tombstone won
            kept = (await cluster[name].kv.get("kept")).entry
            # Both writes reached a replica; the later one wins everywhere (documented).
            assert kept is not None and kept.value == "majority write"


async def test_an_isolated_node_refuses_writes_and_reads_instead_of_hanging(
        autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster(5) as (cluster, network):
        network.isolate("n5")
        for i in range(5):
            started = trio.current_time()
            with pytest.raises(Unavailable):
                await cluster["n5"].kv.put(f"iso{i}", i)
            assert trio.current_time() - started <= REQUEST_TIMEOUT + 0.05
        await cluster["n1"].kv.put("iso0", "fine")
        # Majority/minority: a coordinator on the minority side answers 503 for every
        # key of which it cannot reach W replicas; the majority side never refuses.
        network.heal()
        await wait_until(lambda: converged(cluster, cluster.names), 30, what="heal")
        network.partition(["n1", "n2", "n3"], ["n4", "n5"])
        await wait_until(lambda: cluster["n4"].live_members() == ["n4", "n5"], 10, what="minority view")
        for i in range(12):
            key = f"p{i}"
            on_minority = sum(r in ("n4", "n5") for r in replicas_for(key, cluster.names, 3))
            if on_minority < 2:
                with pytest.raises(Unavailable):
                    await cluster["n4"].kv.put(key, i)
            if on_minority < 2:
                await cluster["n1"].kv.put(key, i)


def chat_member(node: Node, user: str, room: str) -> Connection:
    conn = Connection(user, Protocol.JSON, queue_size=1000, slow_timeout=60)
    node.hub.add(conn)
    node.hub.join(conn, room)
    return conn


def received(conn: Connection, kind: str = "message") -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frame = conn.take_nowait()
        except trio.WouldBlock:
            return [f for f in frames if f.get("type") == kind]
        if isinstance(frame, str):
            frames.append(json.loads(frame))


async def test_chat_reaches_every_reachable_member_once_and_in_order(
        autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster(3) as (cluster, network):
        sender = chat_member(cluster["n1"], "sender", "room")
        members = {name: chat_member(cluster[name], f"user-{name}", "room") for name in cluster.names}
        await wait_until(lambda: len(cluster["n1"].hub.bus.remote_targets("room")) == 2, 10,  # type: ignore[union-attr]
                         what="presence reached n1")
        network.slow("n1", "n2", 0.1)  # a slow link delays, never reorders or duplicates
        got: dict[str, list[str]] = {name: [] for name in members}

        def collect() -> bool:
            for name, conn in members.items():
                got[name] += [m["text"] for m in received(conn)]
            return all(len(texts) >= 30 for texts in got.values())

        for i in range(30):
            await cluster["n1"].hub.publish(sender, "room", f"m{i}")
            if network.rng.random() < 0.3:
                await trio.sleep(network.rng.random())
        await wait_until(collect, 30, what="every member got 30 messages", state=lambda: got)
        await trio.sleep(2)
        collect()  # nothing more may arrive
        for name, texts in got.items():
            assert texts == [f"m{i}" for i in range(30)], f"{name}: {texts}"
        # n3 cut off: the others still get everything, n3's member nothing twice.
        network.heal()
        network.partition(["n3"], ["n1", "n2"])
        await wait_until(lambda: "n3" not in cluster["n1"].live_members(), 10, what="n3 down")
        for i in range(30, 40):
            await cluster["n1"].hub.publish(sender, "room", f"m{i}")
        await trio.sleep(3)
        assert [m["text"] for m in received(members["n2"])] == [f"m{i}" for i in range(30, 40)]
        assert [m["text"] for m in received(members["n1"])] == [f"m{i}" for i in range(30, 40)]
        assert received(members["n3"]) == []
        # And n1's member saw n3's member leave once n3 was marked down.
        assert cluster["n1"].hub.members("room") == [
            {"user": "sender", "node": "n1"}, {"user": "user-n1", "node": "n1"},
            {"user": "user-n2", "node": "n2"}]


async def test_membership_converges_after_a_join_a_crash_and_a_rejoin(
        autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster(3) as (cluster, _):
        await cluster.start("n4", peers=[address_of("n2")])
        await wait_until(lambda: converged(cluster, ["n1", "n2", "n3", "n4"]), 30, what="join")
        await cluster.crash("n4")
        took = await wait_until(lambda: converged(cluster, ["n1", "n2", "n3"]), 30, what="crash noticed")
        assert took <= FAILURE_TIMEOUT + 2
        await cluster.start("n4", peers=[address_of("n3")])
        await wait_until(lambda: converged(cluster, ["n1", "n2", "n3", "n4"]), 30, what="rejoin")


async def test_a_read_repairs_a_stale_replica(autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster(3) as (cluster, _):
        written = await cluster["n1"].kv.put("r", "new")
        stale = cluster["n3"]
        # n3 missed the write: it holds an older version (no membership change, so no hand-off).
        stale.store._entries["r"] = dataclasses.replace(
            written, value="old", version=Version(Timestamp(1, 0), "n9"))
        read = await stale.kv.get("r")  # local answer (stale) + the first remote one (new)
        assert read.entry is not None and read.entry.value == "new" and read.from_node != "n3"
        entry = stale.store.entry("r")
        assert entry is not None and entry.value == "new" and entry.version == written.version


async def test_a_write_after_an_acknowledged_one_wins_even_from_a_slow_clock(
        autojump_clock: trio.testing.MockClock) -> None:
    async with sim_cluster(5) as (cluster, _):
        # A key n2 does not replicate, so n2's clock has never seen its versions.
        key = next(k for k in (f"clock{i}" for i in range(100))
                   if "n2" not in replicas_for(k, cluster.names, 3))
        first = next(n for n in replicas_for(key, cluster.names, 3))
        await cluster[first].kv.put(key, "first")
        behind = cluster["n2"].store.clock
        behind._now_ms = lambda: time.time_ns() // 1_000_000 - 60_000  # a minute slow
        behind._last = Timestamp(0, 0)
        written = await cluster["n2"].kv.put(key, "second")
        for name in cluster.names:
            read = await cluster[name].kv.get(key)
            assert read.entry is not None and read.entry.value == "second", name
        assert written.version == (await cluster["n1"].kv.get(key)).entry.version  # type: ignore[union-attr]


async def test_concurrent_writes_to_one_key_from_every_node_are_all_acknowledged(
        autojump_clock: trio.testing.MockClock) -> None:
    """Writers racing on one key leapfrog each other's versions past the re-stamp limit;
    a write that loses that race is still acknowledged (one wins, the rest are
    overwritten), never refused as if replicas had not answered."""
    async with sim_cluster(3) as (cluster, _):
        refused: list[str] = []

        async def write(name: str, key: str, value: str) -> None:
            try:
                await cluster[name].kv.put(key, value)
            except Unavailable as exc:
                refused.append(f"{name} {key}: {exc}")

        keys = [f"hot{i}" for i in range(20)]
        async with trio.open_nursery() as nursery:
            for key in keys:
                for name in cluster.names:
                    for j in range(4):
                        nursery.start_soon(write, name, key, f"{name}/{j}")
        assert refused == []
        for key in keys:
            values = {(await cluster[n].kv.get(key)).entry.value for n in cluster.names}  # type: ignore[union-attr]
            assert len(values) == 1, (key, values)
