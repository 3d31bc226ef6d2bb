"""Run simulated cluster nodes on a MemoryNetwork inside one trio.run.

`SimCluster` starts nodes through a *node factory* so the same harness serves
mesh-only tests and full-node tests:

    async def factory(spec: NodeSpec, task_status: trio.TaskStatus[T]) -> None:
        ...build the node from spec (name, address, transport, rng, options)...
        task_status.started(handle)   # then run until cancelled

Each node runs under its own cancel scope, so a test can crash one (network
crash + cancel), stop it gracefully (cancel only) and restart it on the same
address. Waits are bounded in simulated time (`wait_until`, `holds_for`), and
`start_watchdog` bounds real time too: under the autojump clock a livelock
never lets simulated time advance, so a simulated deadline alone cannot end it.

Seeds: `pick_seed()` reads CLUSTER_SIM_SEED or draws one, and prints it; all
randomness of the network and of every node (`spec.rng`) derives from it, and
`seed_trio_scheduler` seeds Trio's scheduler tie-breaking too. Python's string
hashing orders sets, so for a replay also set PYTHONHASHSEED (e.g. 0). Replays
are best effort: Trio breaks ties between equal deadlines by object id, and
code under test may read the wall clock (time.time()), so a rare interleaving
can still differ from one process to the next.

Stuck simulations: `MemoryNetwork` raises `ConnectStorm` when connects pile up
while simulated time stands still (a reconnect loop without a sleep), and the
watchdog fails the test after `real_seconds` of wall time whatever the cause.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import trio
import trio.testing

from tests.cluster_sim.network import MemoryNetwork, SimTransport

T = TypeVar("T")

SEED_ENV = "CLUSTER_SIM_SEED"
DEFAULT_PORT = 7000


def pick_seed() -> int:
    """The seed from CLUSTER_SIM_SEED, or a fresh one; printed so a failure can be replayed."""
    raw = os.environ.get(SEED_ENV, "").strip()
    seed = int(raw) if raw else random.SystemRandom().randrange(2**32)
    print(f"seed={seed} (replay: {SEED_ENV}={seed} PYTHONHASHSEED=0)")
    return seed


def seed_trio_scheduler(seed: int) -> None:
    """Make Trio's run-queue tie-breaking follow the seed (best effort: private API)."""
    import trio._core._run as trio_run

    rng = getattr(trio_run, "_r", None)
    if isinstance(rng, random.Random):
        rng.seed(seed)


def address_of(name: str, port: int = DEFAULT_PORT) -> str:
    return f"{name}:{port}"


def assert_mock_clock() -> trio.testing.MockClock:
    """Simulation tests must run on a MockClock (request the autojump_clock fixture)."""
    clock = trio.lowlevel.current_clock()
    assert isinstance(clock, trio.testing.MockClock), "request the autojump_clock fixture in the test"
    return clock


def start_watchdog(nursery: trio.Nursery, real_seconds: float) -> None:
    """Fail (from inside nursery) if the simulation still runs after real_seconds of wall time.

    When started in a pytest-trio fixture's nursery, the error cancels the test.
    """
    token = trio.lowlevel.current_trio_token()
    fired = trio.Event()

    def fire() -> None:
        try:
            token.run_sync_soon(fired.set)
        except trio.RunFinishedError:
            pass

    timer = threading.Timer(real_seconds, fire)
    timer.daemon = True

    async def watch() -> None:
        timer.start()
        try:
            await fired.wait()
        finally:
            timer.cancel()
        raise TimeoutError(f"simulation still running after {real_seconds:g}s of real time "
                           "(livelock? simulated time cannot advance while tasks stay busy)")

    nursery.start_soon(watch)


async def wait_until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05,
                     what: str = "condition", state: Callable[[], object] | None = None) -> float:
    """Poll until predicate() holds; returns the simulated seconds it took.

    AssertionError (with `state()` when given) if it does not hold within timeout.
    """
    start = trio.current_time()
    try:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(interval)
    except trio.TooSlowError:
        detail = f"; state: {state()}" if state is not None else ""
        raise AssertionError(f"{what} did not hold within {timeout:g}s{detail}") from None
    return trio.current_time() - start


async def holds_for(predicate: Callable[[], bool], duration: float, *, interval: float = 0.05,
                    what: str = "condition", state: Callable[[], object] | None = None) -> None:
    """Assert predicate() holds at every poll for `duration` simulated seconds."""
    deadline = trio.current_time() + duration
    while True:
        if not predicate():
            detail = f"; state: {state()}" if state is not None else ""
            raise AssertionError(f"{what} stopped holding after "
                                 f"{duration - (deadline - trio.current_time()):.2f}s{detail}")
        if trio.current_time() >= deadline:
            return
        await trio.sleep(min(interval, deadline - trio.current_time()))


@dataclass
class NodeSpec:
    """What a factory needs to build one node incarnation."""

    name: str
    address: str
    transport: SimTransport
    rng: random.Random
    incarnation: int
    options: dict[str, Any] = field(default_factory=dict)


NodeFactory = Callable[[NodeSpec, "trio.TaskStatus[T]"], Awaitable[None]]


@dataclass
class SimNode(Generic[T]):
    spec: NodeSpec
    handle: T
    scope: trio.CancelScope
    stopped: trio.Event


class SimCluster(Generic[T]):
    """Nodes built by `factory`, each under its own cancel scope in `nursery`."""

    def __init__(self, nursery: trio.Nursery, network: MemoryNetwork, factory: NodeFactory[T], *,
                 stop_timeout: float = 30.0) -> None:
        self.nursery = nursery
        self.network = network
        self.factory = factory
        self.rng = network.rng
        self.stop_timeout = stop_timeout
        self.nodes: dict[str, SimNode[T]] = {}  # running nodes
        self.specs: dict[str, NodeSpec] = {}  # the latest incarnation of every node ever started

    def __getitem__(self, name: str) -> T:
        return self.nodes[name].handle

    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    @property
    def names(self) -> list[str]:
        return sorted(self.nodes)

    def handles(self) -> list[T]:
        return [self.nodes[n].handle for n in self.names]

    async def start(self, name: str, address: str | None = None, **options: Any) -> T:
        """Start a node (its factory has returned from task_status.started); returns its handle."""
        if name in self.nodes:
            raise ValueError(f"{name} is already running")
        previous = self.specs.get(name)
        address = address or address_of(name)
        spec = self.specs[name] = NodeSpec(
            name, address, self.network.transport(address), random.Random(self.rng.getrandbits(64)),
            previous.incarnation + 1 if previous else 1, dict(options))
        scope, stopped = trio.CancelScope(), trio.Event()
        handle: T = await self.nursery.start(self._run, spec, scope, stopped)
        self.nodes[name] = SimNode(spec, handle, scope, stopped)
        return handle

    async def _run(self, spec: NodeSpec, scope: trio.CancelScope, stopped: trio.Event, *,
                   task_status: trio.TaskStatus[T] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await self.factory(spec, task_status)
        finally:
            stopped.set()

    async def stop(self, name: str) -> NodeSpec:
        """Graceful stop: cancel the node, let it close its connections; wait until it is gone."""
        node = self.nodes.pop(name)
        node.scope.cancel()
        with trio.fail_after(self.stop_timeout):
            await node.stopped.wait()
        return node.spec

    async def crash(self, name: str, *, power_loss: bool = False) -> NodeSpec:
        """The process dies: the network resets its streams first, then its tasks are cancelled.

        power_loss: the machine vanishes instead; peers are not told (see MemoryNetwork.crash).
        """
        self.network.crash(self.nodes[name].spec.address, power_loss=power_loss)
        return await self.stop(name)

    async def restart(self, name: str, *, crash: bool = True, **options: Any) -> T:
        """Crash (or stop) the node if it runs, then start it again on the same address.

        Options default to the previous incarnation's, updated by `options`.
        """
        if name in self.nodes:
            await (self.crash(name) if crash else self.stop(name))
        spec = self.specs[name]
        return await self.start(name, spec.address, **{**spec.options, **options})

    async def stop_all(self) -> None:
        for name in list(self.nodes):
            await self.stop(name)
