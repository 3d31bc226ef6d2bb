"""Simulation tests of the cluster mesh alone (no HTTP): whole clusters of `Mesh`
objects on an in-memory network inside one trio.run on the autojump clock.

Every test prints its seed; replay a failure with CLUSTER_SIM_SEED=<seed>
(and PYTHONHASHSEED=0, see tests/cluster_sim/harness.py).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry import baggage, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from trio_websocket import ConnectionClosed, wrap_client_stream

from server.cluster import auth
from server.cluster.links import CLOSE_AUTH_FAILED, LinkError
from server.cluster.membership import Status
from server.cluster.mesh import RESOURCE, Mesh
from server.cluster.protocol import Message
from server.cluster.transport import PreAuthStream
from server.settings import Settings
from tests.cluster_sim.harness import (
    NodeSpec,
    SimCluster,
    address_of,
    assert_mock_clock,
    holds_for,
    pick_seed,
    seed_trio_scheduler,
    start_watchdog,
    wait_until,
)
from tests.cluster_sim.network import MemoryNetwork

SECRET = "s" * 32
WRONG_SECRET = "w" * 32
BASE = dataclasses.replace(
    Settings(), cluster_secret=SECRET, heartbeat_interval=1.0, failure_timeout=5.0,
    member_removal_timeout=30.0, handshake_timeout=3.0, reconnect_max_backoff=4.0)
HB, FAIL, REMOVE = BASE.heartbeat_interval, BASE.failure_timeout, BASE.member_removal_timeout
REAL_SECONDS_LIMIT = 120


async def mesh_node(spec: NodeSpec, task_status: trio.TaskStatus[Mesh]) -> None:
    """The node factory: a Mesh on the simulated network.

    Options: peers (list of addresses), setup (called with the Mesh before it
    runs: register handlers/subscribers there), node_name (default: the
    simulated node's name), and any Settings field.
    """
    options = dict(spec.options)
    peers: list[str] = options.pop("peers", [])
    setup: Callable[[Mesh], None] | None = options.pop("setup", None)
    node_name: str = options.pop("node_name", spec.name)
    settings = dataclasses.replace(BASE, cluster_bind=spec.address, peers=",".join(peers),
                                   **options).validate()
    mesh = Mesh(settings, node_name=node_name, http_url=f"http://{spec.name}:8000",
                transport=spec.transport, rng=spec.rng)
    if setup is not None:
        setup(mesh)
    async with trio.open_nursery() as nursery:
        await nursery.start(mesh.run)
        task_status.started(mesh)


@pytest.fixture
def seed() -> int:
    return pick_seed()


@pytest.fixture
async def sim(nursery: trio.Nursery, seed: int) -> AsyncIterator[SimCluster[Mesh]]:
    assert_mock_clock()
    seed_trio_scheduler(seed)
    start_watchdog(nursery, REAL_SECONDS_LIMIT)
    yield SimCluster(nursery, MemoryNetwork(seed), mesh_node)


# -- helpers ---------------------------------------------------------------------------


def node_names(n: int) -> list[str]:
    return [f"n{i}" for i in range(1, n + 1)]


def full_mesh(sim: SimCluster[Mesh], names: list[str]) -> bool:
    """Every named node runs, lists all of them up and has one open link to each other one."""
    for name in names:
        if name not in sim:
            return False
        mesh = sim[name]
        others = sorted(set(names) - {name})
        if sorted(mesh.membership.up_names()) != sorted(names) or sorted(mesh.up_peers()) != others:
            return False
        if any(link.closed.is_set() for link in mesh.links.values()):
            return False
    return True


def sees(sim: SimCluster[Mesh], observers: list[str], peers: list[str], status: Status) -> bool:
    for name in observers:
        members = sim[name].membership.members
        if any(p not in members or members[p].status is not status for p in peers):
            return False
    return True


def state(sim: SimCluster[Mesh]) -> dict[str, Any]:
    return {name: {"up": mesh.membership.up_names(),
                   "members": {n: m.status.value for n, m in sorted(mesh.membership.members.items())},
                   "links": sorted(mesh.links), "candidates": sorted(mesh.membership.candidates)}
            for name, mesh in zip(sim.names, sim.handles(), strict=True)}


async def start_all(sim: SimCluster[Mesh], seeds: dict[str, list[str]], *,
                    max_stagger: float = 1.0, **options: Any) -> None:
    """Start nodes in a seeded random order, a seeded random delay apart."""
    order = sorted(seeds)
    sim.rng.shuffle(order)
    for name in order:
        await sim.start(name, peers=seeds[name], **options)
        await trio.sleep(sim.rng.uniform(0, max_stagger))


def star(names: list[str]) -> dict[str, list[str]]:
    """n1 knows n2; everyone else knows only n1."""
    return {name: [address_of(names[1] if name == names[0] else names[0])] for name in names}


def ring(names: list[str]) -> dict[str, list[str]]:
    """Each node knows only the next one."""
    return {name: [address_of(names[(i + 1) % len(names)])] for i, name in enumerate(names)}


async def converge(sim: SimCluster[Mesh], names: list[str], timeout: float = 30.0) -> float:
    return await wait_until(lambda: full_mesh(sim, names), timeout, what=f"full mesh of {names}",
                            state=lambda: state(sim))


async def start_star(sim: SimCluster[Mesh], count: int, **options: Any) -> list[str]:
    """Start n1..n<count> as a star (see star()) and wait until they form a full mesh."""
    names = node_names(count)
    seeds = star(names)
    for name in names:
        await sim.start(name, peers=seeds[name], **options)
    await converge(sim, names)
    return names


@dataclass
class Events:
    """Membership announcements as (simulated time, observer, event, peer)."""

    log: list[tuple[float, str, str, str]] = field(default_factory=list)

    def setup(self, mesh: Mesh) -> None:
        """Pass as a node's `setup` option: records everything that node announces."""
        observer = mesh.name
        mesh.subscribe(lambda event, peer: self.log.append((trio.current_time(), observer, event, peer)))

    def times(self, observer: str, event: str, peer: str) -> list[float]:
        return [t for t, o, e, p in self.log if (o, e, p) == (observer, event, peer)]

    def sequence(self, observer: str, peer: str) -> list[str]:
        """What observer announced about peer, repeats collapsed ("up" is re-announced on relink)."""
        out: list[str] = []
        for _, o, e, p in self.log:
            if (o, p) == (observer, peer) and (not out or out[-1] != e):
                out.append(e)
        return out


# -- (a) convergence ---------------------------------------------------------------------


@pytest.mark.parametrize("topology", [star, ring])
@pytest.mark.parametrize("n", [3, 5])
async def test_nodes_knowing_one_seed_each_converge_to_a_full_mesh(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh], n: int,
        topology: Callable[[list[str]], dict[str, list[str]]]) -> None:
    names = node_names(n)
    seeds = topology(names)
    assert all(len(s) == 1 for s in seeds.values())
    await start_all(sim, seeds)
    await converge(sim, names, timeout=30)
    # and it stays that way: heartbeats keep everyone up, nobody redials
    connects = sim.network.connects
    await holds_for(lambda: full_mesh(sim, names), 3 * FAIL, what="full mesh", state=lambda: state(sim))
    assert sim.network.connects == connects
    assert len([c for c in sim.network.connections if not c.broken]) == n * (n - 1) // 2


# -- (b) wrong secret ---------------------------------------------------------------------


async def test_a_node_with_the_wrong_secret_never_joins(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.cluster")
    names = node_names(3)
    events = Events()
    seeds = star(names)
    seeds["n2"].append(address_of("evil"))  # a good node dials the intruder too
    await sim.start("evil", peers=[address_of("n1")], cluster_secret=WRONG_SECRET)
    for name in names:
        await sim.start(name, peers=seeds[name], setup=events.setup)
    await converge(sim, names)

    def evil_is_out() -> bool:
        good = all("evil" not in sim[n].membership.members and "evil" not in sim[n].links for n in names)
        return good and not sim["evil"].membership.members and not sim["evil"].links

    await holds_for(evil_is_out, 30, what="the intruder stays out", state=lambda: state(sim))
    assert not [entry for entry in events.log if "evil" in entry]
    assert full_mesh(sim, names)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "server.cluster.mesh"]
    # n2 dialed evil and rejected its proof; n1 refused evil's link attempts
    assert any(r.getMessage().startswith("cluster: evil at evil:7000 failed authentication")
               for r in warnings), [r.getMessage() for r in warnings]
    assert any("refused a peer link" in r.getMessage() for r in warnings), [r.getMessage() for r in warnings]


async def _raw_client(sim: SimCluster[Mesh], nursery: trio.Nursery, target: str) -> Any:
    stream = await sim.network.transport("mallory:1").open_stream(address_of(target))
    return await wrap_client_stream(nursery, stream, target, RESOURCE)  # type: ignore[arg-type]


def _close_code(exc: ConnectionClosed) -> int:
    assert exc.reason is not None
    return int(exc.reason.code)


async def test_forged_proof_oversize_hello_and_silent_client_are_refused(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.cluster")
    n1 = await sim.start("n1")
    async with trio.open_nursery() as nursery:
        # 1. a client without the secret answers the challenge with a made-up proof
        ws = await _raw_client(sim, nursery, "n1")
        await ws.send_message(auth.frame("hello", node="mallory", nonce=auth.new_nonce(),
                                         address="mallory:1", url="http://mallory"))
        challenge = auth.parse(await ws.get_message(), "challenge", "node", "nonce", "proof")
        assert challenge["node"] == "n1"
        await ws.send_message(auth.frame("auth", proof=challenge["proof"]))  # reflect n1's own proof
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert _close_code(closed.value) == CLOSE_AUTH_FAILED
        # 2. a hello over the pre-auth cap is refused with 1009 (too big)
        ws = await _raw_client(sim, nursery, "n1")
        await ws.send_message(auth.frame("hello", node="mallory", nonce="x" * 4000, address="a:1", url="u"))
        with trio.fail_after(5), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert _close_code(closed.value) == 1009
        # 3. a client that connects and says nothing is dropped after handshake_timeout
        ws = await _raw_client(sim, nursery, "n1")
        started = trio.current_time()
        with trio.fail_after(BASE.handshake_timeout + 2), pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        assert _close_code(closed.value) == CLOSE_AUTH_FAILED
        assert trio.current_time() - started == pytest.approx(BASE.handshake_timeout, abs=0.1)
        nursery.cancel_scope.cancel()
    assert not n1.membership.members and not n1.links
    messages = [r.getMessage() for r in caplog.records if r.name == "server.cluster.mesh"]
    assert len(messages) == 3 and all("refused a peer link" in m for m in messages), messages
    assert "mallory sent a wrong proof" in messages[0]
    assert "pre-authentication frame over 2048 bytes" in messages[1]


async def test_a_flood_before_authentication_is_cut_off_at_the_byte_budget(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh],
        caplog: pytest.LogCaptureFixture) -> None:
    # Under cluster_max_message_bytes, so only the pre-authentication byte budget stops it.
    caplog.set_level(logging.WARNING, logger="server.cluster")
    n1 = await sim.start("n1")
    size = BASE.cluster_max_message_bytes // 2
    assert size > auth.PRE_AUTH_STREAM_BYTES
    async with trio.open_nursery() as nursery:
        ws = await _raw_client(sim, nursery, "n1")
        await ws.send_message(auth.frame("hello", node="mallory", nonce="x" * size, address="a:1", url="u"))
        with trio.fail_after(5), pytest.raises(ConnectionClosed):
            await ws.get_message()
        nursery.cancel_scope.cancel()
    assert not n1.membership.members and not n1.links
    messages = [r.getMessage() for r in caplog.records if r.name == "server.cluster.mesh"]
    assert len(messages) == 1, messages
    assert "refused a peer link" in messages[0]
    assert messages[0].endswith(f"sent over {auth.PRE_AUTH_STREAM_BYTES} bytes before authenticating")


async def test_preauth_stream_reads_no_more_than_its_budget_until_lifted() -> None:
    near, far = trio.testing.memory_stream_pair()
    guarded = PreAuthStream(near, 1000)
    await far.send_all(b"x" * 5000)
    got = b""
    while chunk := await guarded.receive_some(300):
        got += chunk
    assert len(got) == 1000 and guarded.exhausted
    assert await guarded.receive_some() == b""  # stays spent
    lifted = PreAuthStream(near, 10)
    assert await lifted.receive_some() == b"x" * 10
    lifted.lift()
    assert len(await lifted.receive_some()) == 3990  # the rest, unbounded


async def test_messages_up_to_the_cluster_limit_flow_once_authenticated(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    def echo(mesh: Mesh) -> None:
        mesh.on("echo", lambda peer, message: {"back": message.body["data"]})

    await start_star(sim, 2, setup=echo)
    data = "y" * (BASE.cluster_max_message_bytes // 2)  # far over both pre-authentication limits
    for asker, answerer in (("n1", "n2"), ("n2", "n1")):  # dialer and listener side alike
        reply = await sim[asker].request(answerer, "echo", {"data": data}, within_s=5)
        assert reply == {"back": data}


async def test_handshake_timeout_warning_says_why(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.cluster")
    await sim.start("n1")
    async with trio.open_nursery() as nursery:
        ws = await _raw_client(sim, nursery, "n1")
        with trio.fail_after(BASE.handshake_timeout + 2), pytest.raises(ConnectionClosed):
            await ws.get_message()
        nursery.cancel_scope.cancel()
    messages = [r.getMessage() for r in caplog.records if r.name == "server.cluster.mesh"]
    assert len(messages) == 1 and messages[0].endswith(": handshake timed out"), messages


async def test_own_address_as_seed_is_dropped_and_a_duplicate_name_is_reported(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="server.cluster")
    n1 = await sim.start("n1", peers=[address_of("n1")])  # lists itself, as a shared seed list does
    await wait_until(lambda: not n1.membership.candidates, 5, what="own address dropped")
    assert not caplog.records
    twin = await sim.start("twin", peers=[address_of("n1")], node_name="n1")
    await wait_until(lambda: any("also named n1" in r.getMessage() for r in caplog.records), 5,
                     what="a duplicate-name warning")
    assert any(r.getMessage().startswith("cluster: the node at n1:7000 is also named n1")
               for r in caplog.records)
    await holds_for(lambda: not n1.links and not twin.links and not n1.membership.members, 10,
                    what="the twins never link")


# -- (c) crash and restart ------------------------------------------------------------------


@pytest.mark.parametrize("power_loss", [False, True], ids=["process", "power"])
async def test_crashed_node_is_marked_down_after_failure_timeout_and_comes_back_up(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh], power_loss: bool) -> None:
    events = Events()
    names = await start_star(sim, 3, setup=events.setup)
    survivors = ["n1", "n2"]

    crashed_at = trio.current_time()
    await sim.crash("n3", power_loss=power_loss)
    if power_loss:  # nobody is told: the links to n3 look fine until heartbeats are missed
        await trio.sleep(FAIL - HB)
        assert all("n3" in sim[n].links for n in survivors)
    await wait_until(lambda: sees(sim, survivors, ["n3"], Status.DOWN), FAIL + 3 * HB,
                     what="n3 down on n1 and n2", state=lambda: state(sim))
    for observer in survivors:
        [down_at] = events.times(observer, "down", "n3")
        # silent for failure_timeout, not merely disconnected (after a process crash the link broke at once)
        assert FAIL - HB <= down_at - crashed_at <= FAIL + 2 * HB, (observer, down_at - crashed_at)
        mesh = sim[observer]
        assert mesh.membership.up_names() == [observer, *(set(survivors) - {observer})]
        assert "n3" in mesh.membership.placement_names()  # down, not removed: keys stay placed on it
    # a silent link is closed when its peer goes down (within its 1s close handshake)
    await wait_until(lambda: all("n3" not in sim[n].links for n in survivors), 2 * HB, what="links closed")
    assert sorted(sim["n1"].up_peers()) == ["n2"]

    restarted_at = trio.current_time()
    n3 = await sim.restart("n3")
    assert n3 is not None and sim.specs["n3"].incarnation == 2
    await converge(sim, names, timeout=BASE.reconnect_max_backoff + 5)
    for observer in survivors:
        up_again = min(t for t in events.times(observer, "up", "n3") if t >= restarted_at)
        assert events.sequence(observer, "n3") == ["up", "down", "up"]
        assert up_again - restarted_at <= BASE.reconnect_max_backoff + 1
    await holds_for(lambda: full_mesh(sim, names), 2 * FAIL, what="full mesh after restart")


async def test_node_rebooted_after_power_loss_rejoins_without_a_reconnect_storm(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    names = await start_star(sim, 3)
    await sim.crash("n3", power_loss=True)  # no FIN, no RST: n1 and n2 keep their links to it
    await trio.sleep(HB)
    assert sees(sim, ["n1", "n2"], ["n3"], Status.UP) and all("n3" in sim[n].links for n in ("n1", "n2"))
    connects = sim.network.connects
    await sim.restart("n3")  # back within failure_timeout, on the same address
    await converge(sim, names, timeout=FAIL + 2 * HB)
    assert sim.network.connects - connects <= 10


async def test_majority_removes_a_long_dead_member_and_readmits_it(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    events = Events()
    names = await start_star(sim, 3, setup=events.setup)
    crashed_at = trio.current_time()
    await sim.crash("n3")
    await wait_until(lambda: all("n3" not in sim[n].membership.members for n in ("n1", "n2")),
                     FAIL + REMOVE + 3 * HB, what="n3 removed", state=lambda: state(sim))
    for observer in ("n1", "n2"):
        assert events.sequence(observer, "n3") == ["up", "down", "removed"]
        [removed_at] = events.times(observer, "removed", "n3")
        assert removed_at - crashed_at >= FAIL + REMOVE - HB
        assert sim[observer].membership.placement_names() == [observer, *({"n1", "n2"} - {observer})]
        assert address_of("n3") in sim[observer].membership.candidates  # still dialed
    await sim.restart("n3")
    await converge(sim, names, timeout=BASE.reconnect_max_backoff + 5)
    assert events.sequence("n1", "n3") == ["up", "down", "removed", "up"]


# -- (d) partitions ----------------------------------------------------------------------------


@pytest.mark.parametrize("silent", [False, True], ids=["rejecting", "silent"])
async def test_partition_majority_minority_then_heal(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh], silent: bool) -> None:
    names = node_names(5)
    majority, minority = names[:3], names[3:]
    events = Events()
    seeds = ring(names)
    for name in names:
        await sim.start(name, peers=seeds[name], setup=events.setup)
    await converge(sim, names)

    cut_at = trio.current_time()
    sim.network.partition(majority, minority, silent=silent)

    def split() -> bool:
        return (sees(sim, majority, minority, Status.DOWN) and sees(sim, minority, majority, Status.DOWN)
                and all(sees(sim, [n], [p for p in side if p != n], Status.UP)
                        for side in (majority, minority) for n in side))

    took = await wait_until(split, FAIL + 3 * HB, what="each side sees the other down",
                            state=lambda: state(sim))
    assert took >= FAIL - HB
    for side in (majority, minority):
        for name in side:
            assert sim[name].membership.up_names() == [name, *sorted(set(side) - {name})]
    # links across the cut are gone too (a silent one closes within its 1s close handshake)
    await wait_until(lambda: all(sorted(sim[n].links) == sorted(set(side) - {n})
                                 for side in (majority, minority) for n in side), 2 * HB,
                     what="links only within each side", state=lambda: state(sim))
    # a majority removes the unreachable minority after member_removal_timeout; the minority never does
    await wait_until(lambda: all(not set(minority) & set(sim[n].membership.members) for n in majority),
                     REMOVE + 3 * HB, what="majority removes the minority", state=lambda: state(sim))
    await holds_for(lambda: sees(sim, minority, majority, Status.DOWN), 2 * REMOVE,
                    what="minority keeps the majority as down members", state=lambda: state(sim))
    assert not [entry for entry in events.log if entry[1] in minority and entry[2] == "removed"]
    for name in minority:
        assert sorted(sim[name].membership.placement_names()) == names
    assert trio.current_time() - cut_at > 3 * REMOVE

    sim.network.heal()
    await converge(sim, names, timeout=BASE.reconnect_max_backoff + 2 * BASE.handshake_timeout + 5)
    await holds_for(lambda: full_mesh(sim, names), 2 * FAIL, what="full mesh after heal")
    for name in majority:
        assert events.sequence(name, "n5") == ["up", "down", "removed", "up"]
    for name in minority:
        assert events.sequence(name, "n1") == ["up", "down", "up"]


async def test_former_minority_does_not_remove_members_on_regaining_a_majority(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    names = node_names(5)
    majority, minority = names[:3], names[3:]
    events = Events()
    await start_all(sim, ring(names), setup=events.setup)
    await converge(sim, names)
    sim.network.partition(majority, minority)
    await wait_until(lambda: sees(sim, minority, majority, Status.DOWN), FAIL + 3 * HB)
    await trio.sleep(REMOVE + 5)  # the minority has had n1..n3 down for longer than removal_timeout
    assert sees(sim, minority, majority, Status.DOWN)
    # heal, except that n1 reaches the minority a few seconds later than n2 and n3 do
    sim.network.heal()
    sim.network.partition(["n1"], minority)
    await wait_until(lambda: sees(sim, minority, ["n2", "n3"], Status.UP), BASE.reconnect_max_backoff + 5)
    await trio.sleep(3 * HB)
    sim.network.heal()
    await converge(sim, names, timeout=BASE.reconnect_max_backoff + 5)
    removed = [(o, p) for _, o, e, p in events.log if e == "removed" and o in minority]
    assert removed == [], "n1 was down only while its observers had no majority"


async def test_isolated_node_sees_everyone_down_and_rejoins(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    names = node_names(3)
    await start_all(sim, star(names))
    await converge(sim, names)
    sim.network.isolate("n2")
    await wait_until(lambda: sees(sim, ["n2"], ["n1", "n3"], Status.DOWN)
                     and sees(sim, ["n1", "n3"], ["n2"], Status.DOWN), FAIL + 3 * HB,
                     what="n2 cut off", state=lambda: state(sim))
    assert sim["n2"].membership.up_names() == ["n2"]
    assert sees(sim, ["n1"], ["n3"], Status.UP)
    sim.network.heal()
    await converge(sim, names, timeout=BASE.reconnect_max_backoff + 5)


# -- (e) request / reply -------------------------------------------------------------------------

Seen = list[tuple[str, str, Message, dict[str, Any]]]


def echo_setup(seen: Seen) -> Callable[[Mesh], None]:
    """Registers echo (answers with the body and the trace context it ran in) and boom (raises)."""

    def setup(mesh: Mesh) -> None:
        def echo(peer: str, message: Message) -> dict[str, Any]:
            context = trace.get_current_span().get_span_context()
            info = {"trace_id": f"{context.trace_id:032x}" if context.is_valid else None,
                    "span_id": f"{context.span_id:016x}" if context.is_valid else None,
                    "tenant": baggage.get_baggage("tenant")}
            seen.append((mesh.name, peer, message, info))
            return {"echo": message.body, "by": mesh.name}

        def boom(peer: str, message: Message) -> dict[str, Any]:
            raise ValueError("handler bug")

        mesh.on("echo", echo)
        mesh.on("boom", boom)

    return setup


async def test_request_reply_errors_and_trace_context(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    seen: Seen = []
    names = await start_star(sim, 3, setup=echo_setup(seen))
    n1 = sim["n1"]

    # a plain request, outside any span: no trace context travels
    assert await n1.request("n2", "echo", {"x": [1, "ü"]}, 1.0) == {"echo": {"x": [1, "ü"]}, "by": "n2"}
    [(handled_by, sender, message, info)] = seen
    assert (handled_by, sender, message.id is not None) == ("n2", "n1", True)
    assert message.trace == {} and info["trace_id"] is None

    # inside a started span: the handler runs as its child, baggage included
    tracer = TracerProvider().get_tracer("test")
    token = otel_context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with tracer.start_as_current_span("client") as span:
            reply = await n1.request("n3", "echo", {"traced": True}, 1.0)
            assert n1.send("n2", "echo", {"fire": "and forget"})
    finally:
        otel_context.detach(token)
    assert reply["by"] == "n3"
    sent = span.get_span_context()
    trace_id, span_id = f"{sent.trace_id:032x}", f"{sent.span_id:016x}"
    await wait_until(lambda: len(seen) == 3, 1.0, what="fire-and-forget message handled")
    for _, _, message, info in seen[1:]:
        version, got_trace_id, parent_id, _flags = message.trace["traceparent"].split("-")
        assert (version, got_trace_id, parent_id) == ("00", trace_id, span_id)
        assert "tenant=acme" in message.trace["baggage"]
        assert (info["trace_id"], info["span_id"], info["tenant"]) == (trace_id, span_id, "acme")
    assert seen[2][2].id is None  # send() expects no reply

    # the other side's handler context does not leak into later messages
    await n1.request("n2", "echo", {}, 1.0)
    assert seen[-1][2].trace == {} and seen[-1][3]["trace_id"] is None

    with pytest.raises(LinkError, match="unknown message type 'nope'"):
        await n1.request("n2", "nope", {}, 1.0)
    with pytest.raises(LinkError, match="refused boom: ValueError"):
        await n1.request("n2", "boom", {}, 1.0)
    with pytest.raises(LinkError, match="no link to n9"):
        await n1.request("n9", "echo", {}, 1.0)
    assert not n1.send("n9", "echo", {})
    assert full_mesh(sim, names)  # errors do not take links down


async def _timed_request(mesh: Mesh, peer: str, within_s: float) -> tuple[float, str]:
    start = trio.current_time()
    with trio.fail_after(within_s + 2 * BASE.handshake_timeout):  # "never hangs", with margin for close
        with pytest.raises(LinkError) as error:
            await mesh.request(peer, "echo", {"q": 1}, within_s)
    return trio.current_time() - start, str(error.value)


async def test_requests_to_a_partitioned_peer_fail_within_the_deadline(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    seen: Seen = []
    names = await start_star(sim, 3, setup=echo_setup(seen))
    n1 = sim["n1"]
    net = sim.network

    # silent partition: the link still looks open, the answer never comes
    net.partition(["n1"], ["n2"], silent=True)
    took, why = await _timed_request(n1, "n2", 1.5)
    assert took == pytest.approx(1.5, abs=0.01) and "did not answer echo within 1.5s" in why
    net.heal()
    await converge(sim, names, timeout=FAIL + BASE.reconnect_max_backoff + 5)

    # a request in flight when the link is reset fails at once, long before its deadline
    net.slow("n1", "n2", 2.0)
    async with trio.open_nursery() as nursery:
        results: list[tuple[float, str]] = []

        async def ask() -> None:
            results.append(await _timed_request(n1, "n2", 10.0))

        nursery.start_soon(ask)
        await trio.sleep(0.5)
        net.partition(["n1"], ["n2"])
    [(took, why)] = results
    assert took < 1.0 and "closed" in why, (took, why)

    # rejecting partition, link gone: no waiting at all
    await wait_until(lambda: "n2" not in n1.links, 2.0, what="n1's link to n2 dropped")
    took, why = await _timed_request(n1, "n2", 5.0)
    assert took == 0 and why == "no link to n2"

    # the rest of the cluster still answers; after heal n2 does again
    assert (await n1.request("n3", "echo", {}, 1.0))["by"] == "n3"
    net.heal()
    await converge(sim, names, timeout=FAIL + BASE.reconnect_max_backoff + 5)
    assert (await n1.request("n2", "echo", {}, 1.0))["by"] == "n2"


async def test_slow_link_times_out_but_stays_up(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh]) -> None:
    seen: Seen = []
    await sim.start("n1", setup=echo_setup(seen))
    await sim.start("n2", peers=[address_of("n1")], setup=echo_setup(seen))
    await converge(sim, ["n1", "n2"])
    sim.network.slow("n1", "n2", 0.4)  # 0.8s round trip, well under failure_timeout
    took, why = await _timed_request(sim["n1"], "n2", 0.5)
    assert took == pytest.approx(0.5, abs=0.01) and "did not answer" in why
    assert (await sim["n1"].request("n2", "echo", {}, 2.0))["by"] == "n2"
    await holds_for(lambda: full_mesh(sim, ["n1", "n2"]), 2 * FAIL, what="slow link stays up")


# -- (f) duplicate links -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["gate", "slow"])
async def test_mutual_seeds_end_with_one_link_each(
        autojump_clock: trio.testing.MockClock, sim: SimCluster[Mesh], how: str) -> None:
    names = ["n1", "n2"]
    net = sim.network
    if how == "gate":
        # connects hang while the pair is cut off: both dial, then both connect at once
        net.partition(["n1"], ["n2"], silent=True)
    else:
        net.slow("n1", "n2", 0.3)  # both handshakes overlap
    await sim.start("n1", peers=[address_of("n2")])
    await sim.start("n2", peers=[address_of("n1")])
    if how == "gate":
        await trio.sleep(0.5)
        net.heal()
    await converge(sim, names, timeout=10)

    def one_link_each() -> bool:
        n1, n2 = sim["n1"], sim["n2"]
        return (list(n1.links) == ["n2"] and list(n2.links) == ["n1"]
                and n1.links["n2"].dialer == n2.links["n1"].dialer
                and len(net.streams_between("n1", "n2")) == 1)

    await wait_until(one_link_each, 5, what="one link each", state=lambda: state(sim))
    assert net.connects >= 2, "both nodes should have dialed (else this test proves nothing)"
    assert sim["n1"].links["n2"].dialer == "n1"  # the link dialed by the smaller name survives
    link1, link2 = sim["n1"].links["n2"], sim["n2"].links["n1"]
    connects = net.connects
    await holds_for(lambda: one_link_each() and sim["n1"].links["n2"] is link1
                    and sim["n2"].links["n1"] is link2, 3 * FAIL, what="the same single link")
    assert net.connects == connects


async def _reproducible_scenario(seed: int) -> list[tuple[float, str, str, str]]:
    events = Events()
    async with trio.open_nursery() as nursery:
        start_watchdog(nursery, REAL_SECONDS_LIMIT)
        sim = SimCluster(nursery, MemoryNetwork(seed), mesh_node)
        names = node_names(4)
        await start_all(sim, ring(names), setup=events.setup)
        await converge(sim, names)
        sim.network.partition(["n1"], ["n2", "n3"])
        await sim.crash("n4")
        await wait_until(lambda: sees(sim, ["n2", "n3"], ["n1", "n4"], Status.DOWN), FAIL + 3 * HB)
        sim.network.heal()
        await converge(sim, names[:3])
        nursery.cancel_scope.cancel()
    return events.log


def test_simulation_is_reproducible(seed: int) -> None:
    """Two runs with the same seed give the same timeline of membership events (guards the harness)."""
    runs = []
    for _ in range(2):
        seed_trio_scheduler(seed)
        clock = trio.testing.MockClock(autojump_threshold=0)
        runs.append(trio.run(_reproducible_scenario, seed, clock=clock))
    assert runs[0] == runs[1]
    assert {e for _, _, e, _ in runs[0]} == {"up", "down"}
