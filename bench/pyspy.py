"""Profile a server process while a benchmark phase runs: py-spy, summarized.

`recording(pid, path)` samples the process (py-spy record, raw collapsed stacks,
GIL-idle samples dropped) for as long as the `with` block lasts; `summarize(path)`
prints the functions with the most samples, by self time and by inclusive time,
as shares of all samples. py-spy is a dev dependency (requirements-dev.lock); it
needs ptrace on the target (a child of ours: allowed by the default Yama scope).
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RATE = 250  # samples per second: enough for ~1% resolution over a few seconds


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: make install-dev (requirements-dev.lock)")
    return found


@contextmanager
def recording(pid: int, path: Path, rate: int = RATE) -> Iterator[None]:
    """Sample `pid` while the block runs; raw stacks are written to `path` at its end."""
    proc = subprocess.Popen(
        [py_spy(), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
         "--output", str(path), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # attached before the phase starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if not path.exists():
            raise RuntimeError(f"py-spy wrote no profile: {err.decode(errors='replace').strip()}")


def _frame_name(frame: str) -> str:
    # "function (path/to/module.py:LINE)" -> "function (module.py)": lines split one function apart.
    name, _, where = frame.partition(" (")
    file = where.rsplit(":", 1)[0].rsplit("/", 1)[-1].rstrip(")")
    return f"{name} ({file})" if file else name


def summarize(path: Path, top: int = 25) -> str:
    """The `top` functions by self and by inclusive share of the samples in `path`."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # Outermost first; a coroutine's stack may start at the task, not at main.
        frames = [_frame_name(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{total} samples ({path.name})", f"{'self %':>7}  {'incl %':>7}  function"]
    for name, count in own.most_common(top):
        lines.append(f"{count / total:7.1%}  {inclusive[name] / total:7.1%}  {name}")
    lines.append(f"{'':>7}  {'incl %':>7}  function (inclusive, top {top})")
    for name, count in inclusive.most_common(top):
        lines.append(f"{'':>7}  {count / total:7.1%}  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
