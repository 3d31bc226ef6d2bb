"""`python -m server --cluster N` as a user runs it: a supervisor process that
starts N meshed nodes (or, with `--engine valkey`, a local Valkey server and N nodes
sharing it), says when they are ready, and stops them all on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import uuid
from pathlib import Path

import httpx
import pytest
import trio

from server.engine.valkey_process import ping
from tests.e2e.processes import (
    NODE_COMMAND,
    Output,
    alive,
    child_pids,
    environment_of,
    process_env,
    running_process,
)

pytestmark = pytest.mark.e2e

READY_DEADLINE = 60.0   # the supervisor's own deadlines are 20 s (listening) + 15 s (meshed)
EXIT_DEADLINE = 25.0    # the supervisor allows shutdown_timeout + 5 s before SIGKILL
_NODE_LINE = re.compile(r"^node (\S+) http=(\S+) cluster=(\S+)$", re.MULTILINE)
_VALKEY_NODE_LINE = re.compile(r"^node (\S+) http=(\S+)$", re.MULTILINE)
_VALKEY_LINE = re.compile(r"^valkey server at redis://127\.0\.0\.1:(\d+) \(AOF in ([^,)]+)", re.MULTILINE)


async def test_three_node_cluster_forms_and_stops_on_sigint() -> None:
    pytest.importorskip("server.cluster.mesh")
    command = [*NODE_COMMAND, "--cluster", "3", "--bind", "127.0.0.1:0"]
    async with running_process(command, process_env()) as proc, trio.open_nursery() as nursery:
        out = Output(proc)
        nursery.start_soon(out.pump)
        await out.wait_for(r"^cluster of 3 nodes ready; Ctrl-C stops it$", READY_DEADLINE)

        nodes = _NODE_LINE.findall(out.text)
        assert len(nodes) == 3, out.describe()
        names = {name for name, _, _ in nodes}
        assert len(names) == 3, out.describe()
        assert len({url for _, url, _ in nodes}) == 3 and len({addr for _, _, addr in nodes}) == 3
        for name, url, _ in nodes:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                r = await http.get("/nodes")
            assert r.status_code == 200, (url, r.text)
            listed = r.json()["nodes"]
            assert listed[0] == name, (url, listed)  # self first
            assert sorted(listed) == sorted(names), (url, listed, out.describe())

        # The secret lives only in the nodes' environment: the same fresh 64-hex value
        # in all three, and nowhere in what the supervisor printed.
        children = child_pids(proc.pid)
        assert len(children) == 3, (children, out.describe())
        secrets_seen = {environment_of(pid).get("WEBSERVER_CLUSTER_SECRET", "") for pid in children}
        assert len(secrets_seen) == 1, "the nodes do not share one secret"
        secret = secrets_seen.pop()
        assert re.fullmatch(r"[0-9a-f]{64}", secret), "not a token_hex(32) secret"
        assert os.environ.get("WEBSERVER_CLUSTER_SECRET") != secret  # fresh, not inherited

        proc.process.send_signal(signal.SIGINT)
        assert await proc.wait_exit(EXIT_DEADLINE) == 0, out.describe()
        with trio.fail_after(5):
            await out.closed.wait()
        assert secret not in out.text and secret not in proc.stderr(), "the secret was printed"
        assert not [pid for pid in children if alive(pid)], "nodes outlived the supervisor"


def aof_kept_in(directory: Path) -> bool | None:
    """Whether directory holds an AOF (None: the directory is gone)."""
    return (directory / "appendonlydir").is_dir() if directory.exists() else None


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode("utf-8", "replace").split("\0")


async def test_three_node_valkey_cluster_shares_kv_and_stops_its_server() -> None:
    """`--engine valkey`: a local Valkey server first (a free port, AOF in a temporary
    directory), then three nodes on it, with no cluster settings; Ctrl-C stops both."""
    pytest.importorskip("server.engine.valkey.engine")
    command = [*NODE_COMMAND, "--cluster", "3", "--engine", "valkey", "--valkey-port", "0",
               "--bind", "127.0.0.1:0"]
    async with running_process(command, process_env()) as proc, trio.open_nursery() as nursery:
        out = Output(proc)
        nursery.start_soon(out.pump)
        await out.wait_for(r"^cluster of 3 nodes ready; Ctrl-C stops it$", READY_DEADLINE)

        server = _VALKEY_LINE.search(out.text)
        assert server, out.describe()
        port, data_dir = int(server.group(1)), Path(server.group(2))
        assert ping("127.0.0.1", port) == "+PONG", out.describe()
        assert aof_kept_in(data_dir), (data_dir, out.describe())  # AOF on
        nodes = _VALKEY_NODE_LINE.findall(out.text)
        assert len(nodes) == 3 and not _NODE_LINE.search(out.text), out.describe()  # no cluster ports
        names = {name for name, _ in nodes}
        assert len(names) == 3 and len({url for _, url in nodes}) == 3, out.describe()
        for name, url in nodes:
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                r = await http.get("/nodes")
            assert r.status_code == 200, (url, r.text)
            listed = r.json()["nodes"]
            assert listed[0] == name, (url, listed)  # self first
            assert sorted(listed) == sorted(names), (url, listed, out.describe())

        # State is shared through Valkey: written on one node, read on another.
        key, value = f"local-valkey-{uuid.uuid4().hex[:8]}", {"written_on": nodes[0][0]}
        async with httpx.AsyncClient(base_url=nodes[0][1], timeout=10) as h1, \
                httpx.AsyncClient(base_url=nodes[2][1], timeout=10) as h3:
            r = await h1.put(f"/kv/{key}", json=value)
            assert r.status_code == 200, r.text
            r = await h3.get(f"/kv/{key}")
            assert (r.status_code, r.json()["value"]) == (200, value), r.text

        # The supervisor's children: the Valkey server and three nodes dialing it,
        # with the engine set and no mesh settings (no secret, no peers).
        children = child_pids(proc.pid)
        servers = [pid for pid in children if "valkey-server" in " ".join(command_line(pid))
                   or "redis-server" in " ".join(command_line(pid))]
        assert len(servers) == 1, ([command_line(pid) for pid in children], out.describe())
        node_pids = [pid for pid in children if pid not in servers]
        assert len(node_pids) == 3, (children, out.describe())
        for pid in node_pids:
            env = environment_of(pid)
            assert env.get("WEBSERVER_ENGINE") == "valkey", env
            assert env.get("WEBSERVER_VALKEY_URL") == f"redis://127.0.0.1:{port}/0", env
            for absent in ("WEBSERVER_CLUSTER_BIND", "WEBSERVER_PEERS", "WEBSERVER_CLUSTER_SECRET",
                           "WEBSERVER_CLUSTER_ADVERTISE"):
                assert absent not in env, (absent, env)

        proc.process.send_signal(signal.SIGINT)
        assert await proc.wait_exit(EXIT_DEADLINE) == 0, out.describe()
        with trio.fail_after(5):
            await out.closed.wait()
        assert "stopping the valkey server" in out.text, out.describe()
        assert not [pid for pid in node_pids if alive(pid)], "nodes outlived the supervisor"
        assert not alive(servers[0]), "the Valkey server outlived the supervisor"
        assert ping("127.0.0.1", port) == "", f"something still answers on {port}"
        assert aof_kept_in(data_dir) is None, f"the temporary AOF directory {data_dir} was left behind"


async def test_cluster_with_memory_engine_is_a_config_error() -> None:
    command = [*NODE_COMMAND, "--cluster", "2", "--engine", "memory"]
    async with running_process(command, process_env()) as proc:
        assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
        assert "--engine memory: not with --cluster" in proc.stderr(), proc.describe()


async def test_valkey_port_in_use_is_a_config_error() -> None:
    """A taken --valkey-port is refused before anything starts, suggesting --valkey-port 0."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        command = [*NODE_COMMAND, "--cluster", "2", "--engine", "valkey", "--valkey-port", str(port),
                   "--bind", "127.0.0.1:0"]
        async with running_process(command, process_env()) as proc:
            assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
            assert f"--valkey-port: 127.0.0.1:{port} is not free" in proc.stderr(), proc.describe()
            assert "--valkey-port 0" in proc.stderr(), proc.describe()


@pytest.mark.parametrize("count", ["0", "99", "-1"])
async def test_cluster_size_out_of_range_is_a_config_error(count: str) -> None:
    async with running_process([*NODE_COMMAND, "--cluster", count], process_env()) as proc:
        assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
        assert f"--cluster: expected 1 to 9 nodes, got {count}" in proc.stderr(), proc.describe()


async def test_cluster_with_per_node_flags_is_a_config_error() -> None:
    command = [*NODE_COMMAND, "--cluster", "2", "--peers", "127.0.0.1:4100"]
    async with running_process(command, process_env()) as proc:
        assert await proc.wait_exit(EXIT_DEADLINE) == 2, proc.describe()
        assert "--peers: not with --cluster" in proc.stderr(), proc.describe()


def _blocked_port_with_free_next() -> socket.socket:
    """A listening socket on a free port whose next port is free too a moment ago (node 2's:
    a client's ephemeral port there, e.g. one in TIME_WAIT, would fail node 2 first)."""
    for _ in range(50):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", blocker.getsockname()[1] + 1))
            return blocker
        except OSError:
            blocker.close()
    raise RuntimeError("no free port with a free next port in 50 tries")


async def test_a_node_that_cannot_start_stops_the_cluster_with_exit_1() -> None:
    """Node 1's HTTP port is taken: the supervisor says so, stops node 2 and exits 1."""
    with _blocked_port_with_free_next() as blocker:
        port = blocker.getsockname()[1]
        if port + 1 + 100 > 65535:
            pytest.skip("the OS gave a port too high to leave room for the cluster ports")
        command = [*NODE_COMMAND, "--cluster", "2", "--bind", f"127.0.0.1:{port}"]
        async with running_process(command, process_env()) as proc, trio.open_nursery() as nursery:
            out = Output(proc)
            nursery.start_soon(out.pump)
            assert await proc.wait_exit(READY_DEADLINE) == 1, out.describe()
            with trio.fail_after(5):
                await out.closed.wait()
            assert f"webserver@127.0.0.1:{port} stopped before it was listening" in proc.stderr(), \
                out.describe()
            assert "ready" not in out.text, out.describe()
