"""Three real `python -m server` processes clustered over loopback: membership
learnt through one seed, quorum KV and cluster-wide chat surviving a `kill -9`
of one node, and a node with the wrong secret kept out.

Every node binds its HTTP and cluster ports on 127.0.0.1 port 0 (the OS picks a
free one, nothing can race for it); nodes 2 and 3 are given only node 1's
cluster address and must find each other by gossip. Timing is fast
(heartbeat 0.2 s, failure timeout 1.5 s, request timeout 2 s) and every wait
has a deadline.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from tests.e2e.processes import (
    ServerProcess,
    cluster_address_of,
    cluster_node_env,
    node_process,
    nodes_view,
    start_cluster,
    terminate_all,
    wait_converged,
)
from tests.harness import JsonClient

pytestmark = pytest.mark.e2e

FAILURE_TIMEOUT = 1.5     # WEBSERVER_FAILURE_TIMEOUT in FAST_CLUSTER_TIMING
HEARTBEAT_INTERVAL = 0.2  # WEBSERVER_HEARTBEAT_INTERVAL in FAST_CLUSTER_TIMING
# A killed node is marked down by the first heartbeat check past failure_timeout;
# the margin is for a loaded machine, not for the protocol.
DOWN_DEADLINE = FAILURE_TIMEOUT + 2 * HEARTBEAT_INTERVAL + 3.0
TEST_DEADLINE = 30.0
NAMES = ("n1", "n2", "n3")
# A listener refusing a dialer (the dialer's close says why).
_REFUSED = re.compile(r"cluster: refused a peer link from .*authentication failed")


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture
async def cluster(secret: str) -> AsyncIterator[list[ServerProcess]]:
    """n1, then n2 and n3 seeded with n1 only; yielded as soon as all three listen.
    Survivors are stopped together with SIGTERM and must exit 0."""
    async with AsyncExitStack() as stack:
        nodes = await start_cluster(stack, secret, NAMES)
        yield nodes
        codes = await terminate_all(nodes)
        bad = {name: code for name, code in codes.items() if code != 0}
        assert not bad, "\n".join(n.describe() for n in nodes if n.node_name in bad)


def kill_9(node: ServerProcess) -> None:
    os.kill(node.pid, signal.SIGKILL)


async def reaped(node: ServerProcess) -> None:
    with trio.fail_after(5):
        code = await node.process.wait()
    assert code == -signal.SIGKILL, node.describe()


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    """Poll check() until it returns something truthy; its last result goes in the failure."""
    last: Any = None
    with trio.move_on_after(timeout):
        while not (last := await check()):
            await trio.sleep(0.05)
        return last
    raise AssertionError(f"{what}: not within {timeout}s (last: {last!r})")


async def log_says(node: ServerProcess, pattern: re.Pattern[str], timeout: float) -> str:
    """The first line of node's log (stderr) matching pattern, waiting up to timeout."""
    with trio.move_on_after(timeout):
        while not (match := pattern.search(node.stderr())):
            await trio.sleep(0.05)
        start = node.stderr().rfind("\n", 0, match.start()) + 1
        return node.stderr()[start:node.stderr().find("\n", match.end())]
    raise AssertionError(f"no {pattern.pattern!r} in the log of {node.node_name} within {timeout}s:\n"
                         f"{node.describe()}")


def statuses(view: dict[str, Any]) -> dict[str, str]:
    members = view["members"]
    assert isinstance(members, list), view
    return {m["name"]: m["status"] for m in members}


@asynccontextmanager
async def chat_client(node: ServerProcess, username: str) -> AsyncIterator[JsonClient]:
    """A `webserver.v1` JSON-protocol WebSocket client (tests/harness.py's JsonClient)."""
    async with open_websocket_url(f"{node.ws_url}?username={username}",
                                  subprotocols=["webserver.v1"]) as ws:
        assert ws.subprotocol == "webserver.v1"
        yield JsonClient(ws)


async def presence(client: JsonClient, event: str, user: str, node: str, timeout: float) -> dict[str, Any]:
    """The presence push for (event, user, node), skipping any other presence pushes."""
    with trio.fail_after(timeout):
        while True:
            p = await client.push("presence", timeout=timeout)
            if (p["event"], p["user"], p["node"]) == (event, user, node):
                return p


async def no_more_messages(client: JsonClient, for_s: float) -> list[dict[str, Any]]:
    """Message pushes that arrive within for_s (expected: none)."""
    extra: list[dict[str, Any]] = []
    with trio.move_on_after(for_s):
        while True:
            extra.append(await client.push("message", timeout=for_s + 1))
    return extra


# -- a. membership -----------------------------------------------------------------
async def test_membership_converges_through_one_seed(cluster: list[ServerProcess]) -> None:
    with trio.fail_after(TEST_DEADLINE):
        await wait_converged(cluster, timeout=10)
        urls = {n.node_name: n.url for n in cluster}
        for node in cluster:
            view = await nodes_view(node.url, detail=True)
            listed = view["nodes"]
            assert isinstance(listed, list) and listed[0] == node.node_name, (node.node_name, view)
            assert sorted(listed) == sorted(NAMES), (node.node_name, view)
            members = view["members"]
            assert isinstance(members, list), view
            assert members[0]["name"] == node.node_name and members[0]["self"] is True, view
            assert {m["name"]: m["status"] for m in members} == dict.fromkeys(NAMES, "up"), view
            # Each member's advertised HTTP URL is where that process really serves.
            assert {m["name"]: m["http_url"] for m in members} == urls, view
            assert all(re.fullmatch(r"127\.0\.0\.1:\d+", m["cluster_address"]) for m in members), view
        # n2 and n3 were told only of n1: they found each other by gossip.
        for me, other in (("n2", "n3"), ("n3", "n2")):
            assert f"cluster: {other} is up" in cluster[NAMES.index(me)].stderr()


# -- b. quorum KV through a kill -9 ----------------------------------------------------
async def test_kv_survives_kill_9_of_one_node(cluster: list[ServerProcess]) -> None:
    n1, n2, n3 = cluster
    tag = uuid.uuid4().hex[:8]
    values = {f"k{i}-{tag}": {"i": i, "tag": tag, "list": [i, str(i)]} for i in range(8)}
    with trio.fail_after(TEST_DEADLINE):
        await wait_converged(cluster, timeout=10)
        async with httpx.AsyncClient(base_url=n1.url, timeout=10) as h1, \
                httpx.AsyncClient(base_url=n2.url, timeout=10) as h2, \
                httpx.AsyncClient(base_url=n3.url, timeout=10) as h3:
            for key, value in values.items():
                r = await h1.put(f"/kv/{key}", json=value)
                assert r.status_code == 200, (key, r.text)
                assert r.json()["node"] == "n1", r.text
            for key, value in values.items():  # replicated: n3 answers too, before it dies
                r = await h3.get(f"/kv/{key}")
                assert (r.status_code, r.json()["value"]) == (200, value), (key, r.text)

            kill_9(n3)
            await reaped(n3)

            # W=2/R=2 of N=3: the two survivors still hold a quorum for every key.
            for key, value in values.items():
                for http in (h1, h2):
                    r = await http.get(f"/kv/{key}")
                    assert r.status_code == 200, (str(http.base_url), key, r.text)
                    body = r.json()
                    assert body["value"] == value, (key, body)
                    assert body["from_node"] in ("n1", "n2"), (key, body)

            # A new write through n2 reaches its quorum on n1 + n2 and reads back on n1.
            new_key, new_value = f"after-kill-{tag}", {"written_by": "n2", "tag": tag}
            r = await h2.put(f"/kv/{new_key}", json=new_value)
            assert r.status_code == 200, r.text
            assert r.json()["node"] == "n2", r.text
            r = await h1.get(f"/kv/{new_key}")
            assert (r.status_code, r.json()["value"]) == (200, new_value), r.text
            # An overwrite and a delete of an old key also reach their quorum.
            first = next(iter(values))
            r = await h2.put(f"/kv/{first}", json="overwritten")
            assert r.status_code == 200, r.text
            assert (await h1.get(f"/kv/{first}")).json()["value"] == "overwritten"
            assert (await h1.delete(f"/kv/{first}")).status_code == 200
            assert (await h2.get(f"/kv/{first}")).status_code == 404

        # Membership: n3 leaves `/nodes` and is shown down, on both survivors.
        for node, other in ((n1, "n2"), (n2, "n1")):
            async def n3_down(node: ServerProcess = node) -> dict[str, Any] | None:
                view = await nodes_view(node.url, detail=True)
                return view if statuses(view).get("n3") == "down" else None

            view = await eventually(n3_down, DOWN_DEADLINE, f"{node.node_name} marking n3 down")
            assert view["nodes"] == [node.node_name, other], view
            assert statuses(view) == {"n1": "up", "n2": "up", "n3": "down"}, view
            assert "cluster: n3 is down" in node.stderr(), node.describe()


# -- b2. concurrent writes to one key -------------------------------------------------------
async def test_concurrent_writes_to_one_key_from_every_node_all_succeed(
        cluster: list[ServerProcess]) -> None:
    """12 concurrent POST /kv per key (4 through each node) over 20 keys: every write is
    acknowledged (one wins, the others are overwritten: never a false 503), and afterwards
    every node reads the same winner, one of the values written."""
    tag = uuid.uuid4().hex[:8]
    keys = [f"hot{i}-{tag}" for i in range(20)]
    answers: list[tuple[str, int, str]] = []
    with trio.fail_after(TEST_DEADLINE):
        await wait_converged(cluster, timeout=10)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(httpx.AsyncClient(
                base_url=n.url, timeout=10, limits=httpx.Limits(max_connections=100))) for n in cluster]

            async def write(client: httpx.AsyncClient, key: str, value: str) -> None:
                r = await client.post("/kv", json={"key": key, "value": value})
                answers.append((key, r.status_code, r.text))

            async with trio.open_nursery() as nursery:
                for key in keys:
                    for i, client in enumerate(clients):
                        for j in range(4):
                            nursery.start_soon(write, client, key, f"{key}/n{i + 1}/{j}")
            failed = [a for a in answers if a[1] != 200]
            assert len(answers) == 240 and not failed, failed[:5]
            for key in keys:
                values = {(await c.get(f"/kv/{key}")).json()["value"] for c in clients}
                assert len(values) == 1, (key, values)
                assert values.pop().startswith(f"{key}/n"), key


# -- c. chat through a kill -9 ------------------------------------------------------------
async def test_chat_survives_kill_9_of_one_node(cluster: list[ServerProcess]) -> None:
    n1, n2, n3 = cluster
    room = f"room-{uuid.uuid4().hex[:8]}"
    with trio.fail_after(TEST_DEADLINE):
        await wait_converged(cluster, timeout=10)
        async with chat_client(n1, "alice") as alice, chat_client(n2, "bob") as bob, \
                chat_client(n3, "carol") as carol:
            # Joined one after the other, so each earlier member hears the later ones.
            for client in (alice, bob, carol):
                assert (await client.request("join", room=room))["type"] == "ok"
            await presence(alice, "join", "bob", "n2", timeout=5)
            await presence(alice, "join", "carol", "n3", timeout=5)
            await presence(bob, "join", "carol", "n3", timeout=5)

            # A first message reaches both remote members once: the forwarding works.
            assert (await alice.request("chat", room=room, text="before"))["type"] == "ok"
            for client in (bob, carol):
                got = await client.push("message")
                assert (got["text"], got["user"], got["node"]) == ("before", "alice", "n1"), got

            kill_9(n3)
            await reaped(n3)

            # Right after the kill, before n3 is even marked down.
            assert (await alice.request("chat", room=room, text="after-kill"))["type"] == "ok"
            got = await bob.push("message")
            assert (got["text"], got["user"], got["node"]) == ("after-kill", "alice", "n1"), got

            # n3's member leaves presence once n3 is marked down (failure_timeout).
            await presence(alice, "leave", "carol", "n3", timeout=DOWN_DEADLINE)
            await presence(bob, "leave", "carol", "n3", timeout=DOWN_DEADLINE)

            assert (await alice.request("chat", room=room, text="after-down"))["type"] == "ok"
            got = await bob.push("message")
            assert (got["text"], got["user"], got["node"]) == ("after-down", "alice", "n1"), got

            # Exactly once: nothing else for bob; the sender never gets its own messages.
            assert await no_more_messages(bob, 1.0) == []
            assert await no_more_messages(alice, 0.1) == []

            # n1's view of the room: its own member and n2's, n3's gone.
            async with httpx.AsyncClient(base_url=n1.url, timeout=10) as h1:
                r = await h1.get(f"/rooms/{room}")
            assert r.status_code == 200, r.text
            members = sorted((m["user"], m["node"]) for m in r.json()["members"])
            assert members == [("alice", "n1"), ("bob", "n2")], r.text
            # carol's connection died with n3: leaving this block must still be clean.


# -- d. the wrong secret ------------------------------------------------------------------------
async def test_a_node_with_the_wrong_secret_never_joins(cluster: list[ServerProcess], secret: str) -> None:
    wrong = secrets.token_hex(32)
    assert wrong != secret
    with trio.fail_after(TEST_DEADLINE):
        await wait_converged(cluster, timeout=10)
        seeds = [await cluster_address_of(node) for node in cluster]
        async with node_process(cluster_node_env(wrong, name="intruder", peers=seeds)) as intruder:
            # It dials every seed and every handshake fails, on both ends: the intruder
            # finds each node's proof wrong, and each node logs the refused link.
            for node, address in zip(cluster, seeds, strict=True):
                failed = rf"cluster: {node.node_name} at {re.escape(address)} failed authentication"
                await log_says(intruder, re.compile(failed), 10)
                await log_says(node, _REFUSED, 10)

            # ...and for the next few seconds (several redials) nobody sees it, nor it anyone.
            deadline = trio.current_time() + 3.0
            while trio.current_time() < deadline:
                for node in cluster:
                    view = await nodes_view(node.url, detail=True)
                    assert "intruder" not in json.dumps(view), (node.node_name, view)
                    assert sorted(view["nodes"]) == sorted(NAMES), (node.node_name, view)
                own = await nodes_view(intruder.url, detail=True)
                assert own["nodes"] == ["intruder"], own
                assert [m["name"] for m in own["members"]] == ["intruder"], own
                await trio.sleep(0.25)

            for line in intruder.stderr().splitlines():
                assert "intruder is up" not in line and not re.search(r"cluster: n\d is up", line), line
            for node in cluster:
                assert "intruder is up" not in node.stderr(), node.describe()
            assert await intruder.terminate() == 0, intruder.describe()
            for node in [*cluster, intruder]:  # no secret is ever logged
                assert secret not in node.stderr() and wrong not in node.stderr()

