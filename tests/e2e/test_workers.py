"""`python -m server --workers N` and `hypercorn -k trio --workers N server.asgi:app`:
one port served by N processes that form one cluster, so a KV write taken by one
worker is read through another and chat crosses workers.

The kernel picks the worker of each connection, so the tests open connections until
every worker holds one (bounded), telling the worker from `GET /health` (HTTP, on a
one-connection keep-alive client) or from the join reply's own member entry (WebSocket).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import uuid
from contextlib import AsyncExitStack

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from server.ports import free_port
from tests.e2e.processes import (
    FAST_CLUSTER_TIMING,
    NODE_COMMAND,
    Output,
    ServerProcess,
    alive,
    child_pids,
    enter_on_free_port,
    environment_of,
    free_port_range,
    hypercorn_process,
    process_env,
    running_process,
)
from tests.harness import JsonClient

pytestmark = pytest.mark.e2e

READY_DEADLINE = 45.0   # the supervisor's own: 20 s listening + 15 s for the cluster
EXIT_DEADLINE = 25.0    # shutdown_timeout + 5 s before the supervisor kills
ATTEMPTS = 60           # connections opened, at most, to reach every worker
_READY = r"^(\d+) workers serving (http://\S+); Ctrl-C stops them$"
_WORKER = re.compile(r"^worker (\S+) pid=(\d+)(?: cluster=(\S+))?$", re.MULTILINE)


async def http_per_worker(stack: AsyncExitStack, url: str, names: set[str]) -> dict[str, httpx.AsyncClient]:
    """A keep-alive client (one connection) held by each worker, by worker name."""
    found: dict[str, httpx.AsyncClient] = {}
    for _ in range(ATTEMPTS):
        client = httpx.AsyncClient(base_url=url, timeout=10, limits=httpx.Limits(max_connections=1))
        node = (await client.get("/health")).json()["node"]
        if node in names and node not in found:
            stack.push_async_callback(client.aclose)
            found[node] = client
            if len(found) == len(names):
                return found
        else:
            await client.aclose()
    raise AssertionError(f"{ATTEMPTS} connections reached only {sorted(found)} of {sorted(names)}")


async def worker_of(client: httpx.AsyncClient) -> str:
    node = (await client.get("/health")).json()["node"]
    assert isinstance(node, str)
    return node


async def ws_per_worker(stack: AsyncExitStack, url: str, names: set[str], room: str) -> dict[str, JsonClient]:
    """A JSON-protocol client in `room` on each worker, by worker name (the others
    opened on the way stay open, idle, until the test ends)."""
    base = url.replace("http://", "ws://", 1) + "/ws"
    found: dict[str, JsonClient] = {}
    for i in range(ATTEMPTS):
        user = f"u{i}"
        ws = await stack.enter_async_context(
            open_websocket_url(f"{base}?username={user}", subprotocols=["webserver.v1"]))
        client = JsonClient(ws)
        joined = await client.request("join", room=room)
        node = next(m["node"] for m in joined["members"] if m["user"] == user)
        if node in names and node not in found:
            found[node] = client
            if len(found) == len(names):
                return found
    raise AssertionError(f"{ATTEMPTS} WebSockets reached only {sorted(found)} of {sorted(names)}")


async def check_kv_and_chat_cross_workers(url: str, names: set[str]) -> None:
    """Written through each worker, read through each other; chat from each to each."""
    async with AsyncExitStack() as stack:
        http = await http_per_worker(stack, url, names)
        key = f"workers-{uuid.uuid4().hex[:8]}"
        for writer, w in http.items():
            r = await w.put(f"/kv/{key}", json={"by": writer})
            assert (r.status_code, r.json()["node"]) == (200, writer), r.text
            for reader, rd in http.items():
                r = await rd.get(f"/kv/{key}")
                assert (r.status_code, r.json()["value"]) == (200, {"by": writer}), (reader, r.text)
                assert await worker_of(rd) == reader  # still that worker's connection

        room = f"room-{uuid.uuid4().hex[:6]}"
        ws = await ws_per_worker(stack, url, names, room)
        for sender, client in ws.items():
            text = f"from {sender}"
            await client.request("chat", room=room, text=text)
            for receiver, other in ws.items():
                if receiver != sender:
                    with trio.fail_after(10):
                        while (got := await other.push("message"))["text"] != text:
                            pass  # an earlier sender's message
                    assert got["node"] == sender, (receiver, got)


async def start_supervisor(stack: AsyncExitStack, nursery: trio.Nursery, args: list[str],
                           env: dict[str, str | None] | None = None) -> tuple[ServerProcess, Output, str]:
    proc = await stack.enter_async_context(
        running_process([*NODE_COMMAND, *args], process_env({**FAST_CLUSTER_TIMING, **(env or {})})))
    out = Output(proc)
    nursery.start_soon(out.pump)
    url = (await out.wait_for(_READY, READY_DEADLINE)).group(2)
    return proc, out, url


async def test_workers_serve_one_port_as_one_mesh_restart_a_dead_worker_and_stop_on_sigint() -> None:
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        proc, out, url = await start_supervisor(stack, nursery, ["--workers", "2", "--bind", "127.0.0.1:0"])
        # The memory engine (the default) became a loopback mesh, and said so.
        assert "note: the memory engine keeps one process's state" in out.text, out.describe()
        workers = {name: (int(pid), cluster) for name, pid, cluster in _WORKER.findall(out.text)}
        port = url.rpartition(":")[2]
        assert set(workers) == {f"webserver@127.0.0.1:{port}-w1", f"webserver@127.0.0.1:{port}-w2"}, \
            out.describe()
        assert len({cluster for _, cluster in workers.values()}) == 2, out.describe()
        # One fresh secret shared by both, never printed.
        secret = {environment_of(pid).get("WEBSERVER_CLUSTER_SECRET") for pid, _ in workers.values()}
        assert len(secret) == 1 and re.fullmatch(r"[0-9a-f]{64}", secret.pop() or ""), secret

        await check_kv_and_chat_cross_workers(url, set(workers))

        # A worker that dies is restarted with its name and sockets, and rejoins.
        dead = f"webserver@127.0.0.1:{port}-w1"
        os.kill(workers[dead][0], signal.SIGKILL)
        with trio.fail_after(20):
            while not (again := re.search(rf"worker {re.escape(dead)} stopped unexpectedly "
                                          r"\(killed by SIGKILL\); restarted it \(pid (\d+)\)",
                                          proc.stderr())):
                await trio.sleep(0.1)
        assert int(again.group(1)) in child_pids(proc.pid)
        with trio.fail_after(20):
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                while sorted((await http.get("/nodes")).json()["nodes"]) != sorted(workers):
                    await trio.sleep(0.2)
        await check_kv_and_chat_cross_workers(url, set(workers))

        children = child_pids(proc.pid)
        proc.process.send_signal(signal.SIGINT)
        assert await proc.wait_exit(EXIT_DEADLINE) == 0, out.describe()
        assert "stopping 2 worker(s)" in out.text, out.describe()
        assert not [pid for pid in children if alive(pid)], "workers outlived the supervisor"
        nursery.cancel_scope.cancel()


async def test_workers_on_valkey_share_its_state(valkey_server: object) -> None:
    from server.engine.valkey_process import ValkeyProcess

    assert isinstance(valkey_server, ValkeyProcess)
    env: dict[str, str | None] = {"WEBSERVER_VALKEY_PREFIX": f"workers-{uuid.uuid4().hex[:8]}"}
    args = ["--workers", "2", "--bind", "127.0.0.1:0", "--engine", "valkey",
            "--valkey-url", f"{valkey_server.url}/0"]
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        proc, out, url = await start_supervisor(stack, nursery, args, env)
        workers = {name: (int(pid), cluster) for name, pid, cluster in _WORKER.findall(out.text)}
        assert len(workers) == 2 and not any(cluster for _, cluster in workers.values()), out.describe()
        for pid, _ in workers.values():
            assert "WEBSERVER_CLUSTER_SECRET" not in environment_of(pid)
        await check_kv_and_chat_cross_workers(url, set(workers))
        proc.process.send_signal(signal.SIGTERM)
        assert await proc.wait_exit(EXIT_DEADLINE) == 0, out.describe()
        nursery.cancel_scope.cancel()


async def test_workers_with_an_explicit_memory_engine_is_a_config_error() -> None:
    command = [*NODE_COMMAND, "--workers", "2", "--engine", "memory", "--bind", "127.0.0.1:0"]
    async with running_process(command, process_env()) as proc:
        assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
        assert 'engine: "memory" keeps one process\'s state' in proc.stderr(), proc.describe()


async def test_hypercorn_workers_claim_cluster_ports_and_form_one_mesh() -> None:
    base = free_port_range(2)
    env: dict[str, str | None] = {
        "WEBSERVER_WORKERS": "2", "WEBSERVER_CLUSTER_SECRET": secrets.token_hex(32),
        "WEBSERVER_CLUSTER_BIND": f"127.0.0.1:{base}", **FAST_CLUSTER_TIMING}
    async with AsyncExitStack() as stack:
        port, proc = await enter_on_free_port(
            stack, lambda port: hypercorn_process(port, None, args=["--workers", "2"], env=env))
        url = f"http://127.0.0.1:{port}"
        names = {f"webserver@127.0.0.1:{port}-w1", f"webserver@127.0.0.1:{port}-w2"}
        with trio.fail_after(20):
            async with httpx.AsyncClient(base_url=url, timeout=5) as http:
                while set((await http.get("/nodes")).json()["nodes"]) != names:
                    await trio.sleep(0.2)
                members = (await http.get("/nodes", params={"detail": "1"})).json()["members"]
        assert {m["cluster_address"] for m in members} == {f"127.0.0.1:{base}", f"127.0.0.1:{base + 1}"}
        await check_kv_and_chat_cross_workers(url, names)
        await proc.terminate(EXIT_DEADLINE)  # any exit code: Hypercorn's own


async def test_hypercorn_workers_without_a_secret_stop_with_the_reason() -> None:
    command = [sys.executable, "-m", "hypercorn", "-k", "trio", "--workers", "2",
               "--bind", f"127.0.0.1:{free_port()}", "server.asgi:app"]
    async with running_process(command, process_env({"WEBSERVER_WORKERS": "2"})) as proc:
        await proc.wait_exit(EXIT_DEADLINE)  # its code: Hypercorn's (0 here, though a worker failed)
        stderr = proc.stderr()
        assert "webserver: configuration error: cluster_secret: 2 Hypercorn workers form a mesh" \
            in stderr, proc.describe()
        assert "Traceback" not in stderr, stderr
