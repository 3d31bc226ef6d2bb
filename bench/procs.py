"""Child processes for benchmarks: pinned to a core, started, awaited, always stopped.

A server child prints one line naming its URL on stdout ("... listening on
http://HOST:PORT"); both of its streams go to files in a temporary directory so
a chatty child can never block on a full pipe, and its log is shown on failure.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
TASKSET = shutil.which("taskset") or "/usr/bin/taskset"
# Every server child (nodes, the naive baselines, the OTLP sink) ends its ready line so.
_URL = re.compile(r"listening on (http://\S+)")


@dataclass(frozen=True)
class Cores:
    """Which CPU the server gets and which the load generator and helpers get."""

    server: int | None
    client: int | None

    def describe(self) -> str:
        if self.server is None:
            return "not pinned (fewer than 2 CPUs)"
        return f"server on CPU {self.server}, load generator and helpers on CPU {self.client}"


# cpu=EVERY_CPU: any CPU, not the load generator's one a child would inherit (pin_self).
EVERY_CPU = -1


def cpu_set(cpu: int) -> set[int]:
    return set(_CPUS) if cpu == EVERY_CPU else {cpu}


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    """`argv` run under `taskset -c cpu` (unchanged when cpu is None)."""
    if cpu is None or not os.path.exists(TASKSET):
        return list(argv)
    return [TASKSET, "-c", ",".join(map(str, sorted(cpu_set(cpu)))), *argv]


# Captured at import, before any benchmark pins this process to one CPU.
_CPUS = sorted(os.sched_getaffinity(0))


def choose_cores() -> Cores:
    cpus = _CPUS
    if len(cpus) < 2:
        return Cores(None, None)
    return Cores(cpus[0], cpus[1])


def pin_self(cpu: int | None) -> None:
    """Move this (load generator) process onto `cpu` (children inherit it); stop cleanly on SIGTERM."""
    stop_on_sigterm()
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _child_setup() -> None:
    """Runs in each child before exec: more file descriptors, and die with the parent."""
    raise_fd_limit()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt here, so `with server(...)` blocks stop children."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (1000+ sockets need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def fd_limit(pid: int | None = None) -> int:
    """Soft RLIMIT_NOFILE of `pid` (from /proc/PID/limits), or of this process; -1: unlimited."""
    if pid is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return -1 if soft == resource.RLIM_INFINITY else soft
    with open(f"/proc/{pid}/limits", encoding="ascii") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft_text = line.split()[3]
                return -1 if soft_text == "unlimited" else int(soft_text)
    raise RuntimeError(f"no open-files limit for pid {pid}")


def check_fd_room(count: int, pid: int | None = None, spare: int = 256) -> None:
    """Fail at once, saying why, unless `pid` (None: this process) may open `count` more
    sockets besides `spare` for its own files, rather than midway with EMFILE."""
    limit = fd_limit(pid)
    if 0 <= limit < count + spare:
        who = "this process" if pid is None else f"process {pid}"
        raise RuntimeError(f"{who} may open {limit} files; {count} connections need "
                           f"{count + spare}: raise the hard limit (ulimit -Hn)")


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc/PID/status (VmRSS)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """One child process with its output in files; `stop()` is idempotent."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], name: str,
                 cwd: Path = REPO_ROOT) -> None:
        self.name = name
        self._dir = tempfile.TemporaryDirectory(prefix=f"bench-{name}-")
        self.out_path = Path(self._dir.name) / "stdout"
        self.err_path = Path(self._dir.name) / "stderr"
        self.final_output: str | None = None
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, preexec_fn=_child_setup, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def log_tail(self, lines: int = 30) -> str:
        text = self.err_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = pattern.search(self.output())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start (exit {self.proc.returncode}):\n"
                           f"{self.output()}\n{self.log_tail()}")

    def stop(self, grace: float = 8.0) -> int | None:
        """SIGTERM, wait `grace` seconds, then SIGKILL the child's process group.

        Idempotent; afterwards `final_output` holds all the child printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.final_output is None:
            self.final_output = self.output()
            self._dir.cleanup()
        return self.proc.returncode


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for children: ours minus WEBSERVER_*/OTEL_* (set them explicitly)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WEBSERVER_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@contextmanager
def server(module: str, cpu: int | None, env: Mapping[str, str], *, name: str | None = None,
           args: Sequence[str] = (), prelude: str = "",
           cwd: Path = REPO_ROOT) -> Iterator[tuple[Child, str]]:
    """Run `python -m module` pinned to `cpu`; yields (child, base URL) and stops it after.

    `cwd` is the checkout whose code runs (another commit's, for an A/B comparison).

    `prelude` is Python run first in the child (a what-if knob, e.g. a GC setting)."""
    if prelude:
        run = f"{prelude}\nimport runpy\nrunpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
        argv = pinned(cpu, [sys.executable, "-c", run, *args])
    else:
        argv = pinned(cpu, [sys.executable, "-m", module, *args])
    child = Child(argv, env, name or module, cwd)
    try:
        url = child.wait_for_line(_URL).group(1)
        if cpu is not None and os.sched_getaffinity(child.pid) != cpu_set(cpu):
            raise RuntimeError(f"{child.name} is not pinned to CPU {cpu}")
        yield child, url
    finally:
        child.stop()


def node_env(tracing: str, collector: str | None = None, **settings: str) -> dict[str, str]:
    """Environment for `python -m server`: tracing 'off', or on with the given endpoint."""
    extra = {"WEBSERVER_BIND": "127.0.0.1:0"}
    extra.update({f"WEBSERVER_{k.upper()}": v for k, v in settings.items()})
    if tracing == "off":
        extra["OTEL_SDK_DISABLED"] = "true"
    elif collector is not None:
        extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector
    return child_env(extra)
