"""Real server processes for end-to-end tests: `python -m server` and the Hypercorn CLI.

Every wait has a deadline, and `running_process` kills whatever is still alive
when the test ends, passed or failed. stdout is a pipe (the node announces its
URL there); stderr goes to an append-only temporary file, so a chatty process
can never block on a full pipe and the test can read it at any time.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import IO, Any

import httpx
import trio

from server.announce import LISTENING
from server.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_COMMAND = (sys.executable, "-m", "server")
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class PortInUse(AssertionError):
    """The process could not bind its port: someone took it after `free_port` found it free."""


def _ended(proc: ServerProcess, what: str) -> AssertionError:
    cls = PortInUse if "Address already in use" in proc.stderr() else AssertionError
    return cls(f"process ended before {what}:\n{proc.describe()}")


def process_env(overrides: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The parent's environment minus its WEBSERVER_* / OTEL_* settings, plus ours.

    Defaults: bind an OS-chosen loopback port, tracing off (a test that wants
    spans sets OTEL_EXPORTER_OTLP_ENDPOINT and OTEL_SDK_DISABLED=None). A value
    of None removes the variable.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEBSERVER_", "OTEL_"))}
    env.update(PYTHONUNBUFFERED="1", WEBSERVER_BIND="127.0.0.1:0", OTEL_SDK_DISABLED="true")
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class ServerProcess:
    def __init__(self, process: trio.Process, stderr: IO[bytes], command: Sequence[str]) -> None:
        self.process = process
        self.command = list(command)
        self._stderr = stderr
        self._stdout = bytearray()
        self.url = ""
        self.node_name = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    def stderr(self) -> str:
        """Everything the process wrote to stderr so far."""
        fd = self._stderr.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def stdout(self) -> str:
        """What has been read from stdout (up to the listening line)."""
        return self._stdout.decode("utf-8", "replace")

    def describe(self) -> str:
        return (f"{' '.join(self.command)} (pid {self.pid}, returncode {self.returncode})\n"
                f"--- stdout ---\n{self.stdout()}--- stderr ---\n{self.stderr()}")

    async def read_listening_line(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Read stdout until `webserver node NAME listening on URL`; returns the URL."""
        assert self.process.stdout is not None
        with trio.move_on_after(timeout):
            while True:
                if match := LISTENING.search(self.stdout()):
                    self.node_name, self.url = match.group(1), match.group(2)
                    return self.url
                chunk = await self.process.stdout.receive_some(4096)
                if not chunk:
                    await self.wait_exit(5)
                    raise _ended(self, "listening")
                self._stdout += chunk
        raise AssertionError(f"no 'listening on' line within {timeout}s:\n{self.describe()}")

    async def wait_http_ready(self, url: str, path: str = "/nodes",
                              timeout: float = STARTUP_TIMEOUT) -> None:
        """For servers that announce nothing on stdout: poll until `path` answers 200."""
        self.url = url
        with trio.move_on_after(timeout) as scope:
            async with httpx.AsyncClient(base_url=url, timeout=2) as client:
                while True:
                    if self.returncode is not None:
                        raise _ended(self, "serving")
                    try:
                        if (await client.get(path)).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.1)
        if scope.cancelled_caught:
            raise AssertionError(f"{url}{path} did not answer within {timeout}s:\n{self.describe()}")

    async def wait_exit(self, timeout: float) -> int:
        """The exit code of a process expected to end by itself within timeout."""
        with trio.move_on_after(timeout):
            return await self.process.wait()
        raise AssertionError(f"process still running after {timeout}s:\n{self.describe()}")

    async def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then the exit code; a process that overruns is killed and the test fails."""
        if self.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(timeout):
            return await self.process.wait()
        self.process.kill()
        with trio.move_on_after(5):
            await self.process.wait()
        raise AssertionError(f"no exit within {timeout}s of SIGTERM; killed:\n{self.describe()}")


@asynccontextmanager
async def running_process(command: Sequence[str], env: Mapping[str, str]) -> AsyncIterator[ServerProcess]:
    """Start command in the repository root; on the way out, whatever still runs is
    sent SIGTERM and, after a grace period, SIGKILL."""
    with tempfile.TemporaryFile(mode="a+b", prefix="e2e-stderr-") as stderr:
        process = await trio.lowlevel.open_process(
            list(command), cwd=str(REPO_ROOT), env=dict(env), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=stderr)
        proc = ServerProcess(process, stderr, command)
        try:
            yield proc
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with trio.move_on_after(STOP_TIMEOUT):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    with trio.move_on_after(5):
                        await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()


async def enter_on_free_port(stack: AsyncExitStack,
                             start: Callable[[int], AbstractAsyncContextManager[ServerProcess]],
                             attempts: int = 3) -> tuple[int, ServerProcess]:
    """Start a server on a specific free port, trying another if it was taken meanwhile."""
    for _ in range(attempts):
        port = free_port()
        try:
            return port, await stack.enter_async_context(start(port))
        except PortInUse:
            continue
    raise AssertionError(f"no free port could be bound in {attempts} attempts")


def free_port_range(count: int, attempts: int = 20) -> int:
    """The first of count consecutive ports that were free on loopback a moment ago
    (the Hypercorn workers' cluster range, which must be consecutive)."""
    for _ in range(attempts):
        base = free_port()
        if base + count - 1 > 65535:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    sock = held.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return base
    raise AssertionError(f"no {count} consecutive free ports in {attempts} attempts")


@asynccontextmanager
async def node_process(env: Mapping[str, str | None] | None = None, args: Sequence[str] = (),
                       startup_timeout: float = STARTUP_TIMEOUT) -> AsyncIterator[ServerProcess]:
    """`python -m server ARGS` with process_env(env), yielded once it is listening."""
    async with running_process([*NODE_COMMAND, *args], process_env(env)) as proc:
        await proc.read_listening_line(startup_timeout)
        yield proc


# -- clusters of node processes ------------------------------------------------
# Each node binds HTTP and cluster ports chosen by the OS (port 0): no window in
# which another process could take a port picked for it. A node's cluster address
# is read back from its own `/nodes?detail=1`.

FAST_CLUSTER_TIMING: dict[str, str | None] = {
    "WEBSERVER_HEARTBEAT_INTERVAL": "0.2",
    "WEBSERVER_FAILURE_TIMEOUT": "1.5",
    "WEBSERVER_CLUSTER_REQUEST_TIMEOUT": "2",
}


def cluster_node_env(secret: str, *, name: str, peers: Sequence[str] = (),
                     extra: Mapping[str, str | None] | None = None) -> dict[str, str | None]:
    """Environment for one clustered node on loopback (feed it to `node_process`)."""
    env: dict[str, str | None] = {
        "WEBSERVER_NODE_NAME": name,
        "WEBSERVER_CLUSTER_BIND": "127.0.0.1:0",
        "WEBSERVER_CLUSTER_SECRET": secret,
        **FAST_CLUSTER_TIMING,
    }
    if peers:
        env["WEBSERVER_PEERS"] = ",".join(peers)
    env.update(extra or {})
    return env


async def nodes_view(url: str, detail: bool = False) -> dict[str, Any]:
    """`GET /nodes` (or `/nodes?detail=1`) of a node, as JSON."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        r = await http.get("/nodes", params={"detail": "1"} if detail else None)
    assert r.status_code == 200, (url, r.status_code, r.text)
    body = r.json()
    assert isinstance(body, dict), body
    return body


async def cluster_address_of(proc: ServerProcess) -> str:
    """The cluster address a running clustered node advertises (its own entry, listed first)."""
    members = (await nodes_view(proc.url, detail=True))["members"]
    assert isinstance(members, list) and members, members
    me = members[0]
    assert isinstance(me, dict) and me.get("self") is True and me.get("name") == proc.node_name, members
    address = me.get("cluster_address")
    assert isinstance(address, str) and address, me
    return address


async def start_cluster(stack: AsyncExitStack, secret: str, names: Sequence[str],
                        extra: Mapping[str, str | None] | None = None) -> list[ServerProcess]:
    """Start one node process per name: the first alone, the others (concurrently)
    with only the first one's cluster address as peer. Returns once all listen;
    membership may not have converged yet (see `wait_converged`)."""
    first = await stack.enter_async_context(
        node_process(cluster_node_env(secret, name=names[0], extra=extra)))
    seed = await cluster_address_of(first)
    rest: list[ServerProcess | None] = [None] * (len(names) - 1)

    async def start(i: int, name: str, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        # Entered in the test's exit stack, so they outlive this nursery.
        task_status.started()
        rest[i] = await stack.enter_async_context(
            node_process(cluster_node_env(secret, name=name, peers=[seed], extra=extra)))

    async with trio.open_nursery() as nursery:
        for i, name in enumerate(names[1:]):
            await nursery.start(start, i, name)
    started = [first, *(p for p in rest if p is not None)]
    assert len(started) == len(names)
    return started


async def wait_converged(nodes: Sequence[ServerProcess], timeout: float = 15.0) -> None:
    """Until every node's `/nodes` lists exactly all of them, itself first."""
    names = sorted(n.node_name for n in nodes)
    last: dict[str, object] = {}
    with trio.move_on_after(timeout):
        while True:
            views = [await nodes_view(n.url) for n in nodes]
            last = {n.node_name: v["nodes"] for n, v in zip(nodes, views, strict=True)}
            if all(isinstance(listed, list) and listed[:1] == [name] and sorted(listed) == names
                   for name, listed in last.items()):
                return
            await trio.sleep(0.1)
    raise AssertionError(f"membership did not converge within {timeout}s: {last}")


async def terminate_all(nodes: Sequence[ServerProcess], timeout: float = STOP_TIMEOUT) -> dict[str, int]:
    """SIGTERM every node still running, all at once; their exit codes by node name."""
    codes: dict[str, int] = {}

    async def stop(node: ServerProcess) -> None:
        codes[node.node_name] = await node.terminate(timeout)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            if node.returncode is None:
                nursery.start_soon(stop, node)
    return codes


# -- supervisors (`--cluster N`, `--workers N`) and their children -------------------

class Output:
    """Everything a supervisor writes to stdout, read continuously so that it
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

    async def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        with trio.move_on_after(timeout):
            while not (found := re.search(pattern, self.text, re.MULTILINE)):
                if self.closed.is_set() or self.proc.returncode is not None:
                    await trio.sleep(0.5)  # the rest of its output
                    raise AssertionError(f"supervisor ended before {pattern!r}:\n{self.describe()}")
                await trio.sleep(0.05)
            return found
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


# -- the Hypercorn CLI ---------------------------------------------------------------

@asynccontextmanager
async def hypercorn_process(port: int, name: str | None, more_binds: Sequence[str] = (), *,
                            args: Sequence[str] = (),
                            env: Mapping[str, str | None] | None = None) -> AsyncIterator[ServerProcess]:
    """The documented deployment: Hypercorn's CLI serving server.asgi:app, ready to answer
    (on `port`: its first request). name=None leaves WEBSERVER_NODE_NAME unset; `args`
    go to Hypercorn (e.g. --workers), `env` to process_env."""
    binds = [f"127.0.0.1:{port}", *more_binds]
    command = [sys.executable, "-m", "hypercorn", "-k", "trio", *args,
               *(arg for bind in binds for arg in ("--bind", bind)), "server.asgi:app"]
    async with running_process(command, process_env(
            {"WEBSERVER_NODE_NAME": name, "WEBSERVER_BIND": None, **(env or {})})) as proc:
        await proc.wait_http_ready(f"http://127.0.0.1:{port}")
        yield proc
