"""Fixtures of the browser tests: Debian's chromium driven by Playwright (sync API, plain
sync tests: Playwright's async API needs asyncio), and a real 3-node cluster of
`python -m server` processes on loopback whose nodes can be stopped and restarted
on the same ports. The nodes keep their default names (`webserver@127.0.0.1:PORT`),
as real ones do: the pages must fit those, not short test names."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import pytest

from server.ports import free_port
from tests.e2e.processes import FAST_CLUSTER_TIMING, REPO_ROOT, process_env

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "test-output" / "screenshots"
STARTUP_TIMEOUT = 30.0


@dataclass
class NodeProc:
    """One node with fixed ports, so that it can be restarted where it was."""

    label: str  # n1, n2, n3: for messages only; the node's own name is `name`
    port: int
    cluster_port: int
    env: dict[str, str]
    log: IO[bytes] = field(default_factory=lambda: tempfile.TemporaryFile(prefix="browser-node-"))
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        """The default node name (server/node.py default_node_name): no node_name is set."""
        return f"webserver@127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cluster_address(self) -> str:
        return f"127.0.0.1:{self.cluster_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=REPO_ROOT, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode("utf-8", "replace")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = self.proc is not None and self.proc.poll() is None
            assert alive, f"{self.label} exited:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.label} not serving within {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"{self.label} ignored SIGTERM for {timeout}s:\n{self.output()}") from None


def live_nodes(url: str) -> list[str]:
    try:
        body: dict[str, Any] = httpx.get(f"{url}/nodes", timeout=2).json()
    except (httpx.TransportError, ValueError):
        return []
    nodes = body.get("nodes")
    return nodes if isinstance(nodes, list) else []


def wait_converged(nodes: list[NodeProc], timeout: float = 20.0) -> None:
    names = sorted(n.name for n in nodes)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(sorted(live_nodes(n.url)) == names for n in nodes):
            return
        time.sleep(0.1)
    raise AssertionError(f"cluster did not converge: {[live_nodes(n.url) for n in nodes]}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[NodeProc]]:
    """n1, n2, n3 (n2 and n3 seeded with n1), tracing on with a collector that is not there
    (spans stay readable through the trace API), fast failure detection."""
    secret = secrets.token_hex(32)
    names = ("n1", "n2", "n3")
    ports = [(free_port(), free_port()) for _ in names]
    seed = f"127.0.0.1:{ports[0][1]}"
    nodes: list[NodeProc] = []
    for i, (name, (port, cport)) in enumerate(zip(names, ports, strict=True)):
        env = process_env({
            **FAST_CLUSTER_TIMING,
            "WEBSERVER_BIND": f"127.0.0.1:{port}",
            "WEBSERVER_NODE_NAME": None,
            "WEBSERVER_CLUSTER_BIND": f"127.0.0.1:{cport}",
            "WEBSERVER_CLUSTER_SECRET": secret,
            "WEBSERVER_PEERS": seed if i else None,
            "WEBSERVER_RECONNECT_MAX_BACKOFF": "1",
            "WEBSERVER_SHUTDOWN_TIMEOUT": "1",
            "OTEL_SDK_DISABLED": None,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
        })
        nodes.append(NodeProc(name, port, cport, env))
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        wait_converged(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            node.log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (Debian package `chromium`; .ci/install-system-deps installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (see requirements.lock)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()
