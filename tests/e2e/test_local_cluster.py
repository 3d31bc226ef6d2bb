"""`python -m server --cluster N` as a user runs it: a supervisor process that
starts N meshed nodes, says when they are ready, and stops them all on Ctrl-C."""

from __future__ import annotations

import codecs
import os
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.processes import NODE_COMMAND, ServerProcess, process_env, running_process

pytestmark = pytest.mark.e2e

READY_DEADLINE = 60.0   # the supervisor's own deadlines are 20 s (listening) + 15 s (meshed)
EXIT_DEADLINE = 25.0    # the supervisor allows shutdown_timeout + 5 s before SIGKILL
_NODE_LINE = re.compile(r"^node (\S+) http=(\S+) cluster=(\S+)$", re.MULTILINE)


class Output:
    """Everything the supervisor writes to stdout, read continuously so that it
    never blocks on a full pipe while the test looks elsewhere."""

    def __init__(self, proc: ServerProcess) -> None:
        self.proc = proc
        self.text = ""
        self.closed = trio.Event()

    async def pump(self) -> None:
        stream = self.proc.process.stdout
        assert stream is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while chunk := await stream.receive_some(65536):
            self.text += decoder.decode(chunk)
        self.closed.set()

    async def wait_for(self, pattern: str, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not re.search(pattern, self.text, re.MULTILINE):
                if self.closed.is_set() or self.proc.returncode is not None:
                    await trio.sleep(0.5)  # the rest of its output
                    raise AssertionError(f"supervisor ended before {pattern!r}:\n{self.describe()}")
                await trio.sleep(0.05)
            return
        raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.describe()}")

    def describe(self) -> str:
        return (f"returncode {self.proc.returncode}\n--- stdout ---\n{self.text}"
                f"--- stderr ---\n{self.proc.stderr()}")


def child_pids(parent: int) -> list[int]:
    """Processes whose parent is `parent` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may contain spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == parent:
            pids.append(int(entry.name))
    return pids


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split("=", 1) for item in raw.decode("utf-8", "replace").split("\0") if "=" in item)
    return {key: value for key, value in pairs}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie not yet reaped by its new parent counts as gone
        return (Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]) != "Z"
    except OSError:
        return False


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


async def test_a_node_that_cannot_start_stops_the_cluster_with_exit_1() -> None:
    """Node 1's HTTP port is taken: the supervisor says so, stops node 2 and exits 1."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
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
