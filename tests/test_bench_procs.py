"""bench/procs.py's file-descriptor checks: a 10,000-connection bench fails at once,
saying why, when a process may not open that many sockets."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time

import pytest

from bench.procs import check_fd_room, fd_limit


def test_fd_limit_reads_a_process_limit_as_getrlimit_does() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    expected = -1 if soft == resource.RLIM_INFINITY else soft
    assert fd_limit() == expected == fd_limit(os.getpid())


def test_check_fd_room_reads_another_process() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (300, "
                               "resource.getrlimit(resource.RLIMIT_NOFILE)[1])); sys.stdin.read()"],
        stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while fd_limit(child.pid) != 300:  # until the child has lowered its limit
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        check_fd_room(44, child.pid)  # 44 + 256 spare fit in 300
        with pytest.raises(RuntimeError, match=rf"process {child.pid} may open 300 files; 45 "
                                               "connections need 301"):
            check_fd_room(45, child.pid)
    finally:
        child.communicate(b"")
