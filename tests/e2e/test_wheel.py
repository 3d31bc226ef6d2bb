"""The wheel as a user gets it: built from a copy of the source, installed into a fresh
venv with the runtime pins (requirements.lock) only, and run as `webserver` from a
directory outside the repository, so every page and default it uses comes from the
installed package. pip's cache and its configured indexes are used as they are."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from server.announce import LISTENING
from tests.e2e.processes import REPO_ROOT, STARTUP_TIMEOUT, STOP_TIMEOUT, process_env

pytestmark = pytest.mark.e2e

# Generous for a cold pip cache (the build backend and the runtime wheels are downloaded
# once); warm, the whole test takes about 15 s.
BUILD_TIMEOUT = 180.0
INSTALL_TIMEOUT = 300.0
_LAST_URL_LINE = re.compile(r"trace viewer:\s+(\S+)\n")
# What a module run in the new venv reports about where the package and its data are.
_WHERE = """
import json, server, tracing
from importlib import resources
from server.settings import DEFAULT_CONFIG, Settings
typed = [resources.files(p).joinpath("py.typed").is_file() for p in ("server", "tracing")]
print(json.dumps({"server": server.__file__, "tracing": tracing.__file__, "typed": typed,
                  "config": str(DEFAULT_CONFIG), "telemetry": Settings().telemetry_config}))
"""


def _clean_env() -> dict[str, str]:
    """The environment without anything that would import from the source tree."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _copy_source(dest: Path) -> None:
    """What the build reads (server/defaults links into conf/, kept as links)."""
    dest.mkdir()
    shutil.copy2(REPO_ROOT / "pyproject.toml", dest)
    for extra in (*REPO_ROOT.glob("README*"), *REPO_ROOT.glob("LICENSE*")):
        shutil.copy2(extra, dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for tree in ("server", "tracing", "conf"):
        shutil.copytree(REPO_ROOT / tree, dest / tree, symlinks=True, ignore=ignore)


async def _run(command: Sequence[str | Path], *, timeout: float, cwd: Path) -> str:
    with trio.fail_after(timeout):
        result = await trio.run_process([str(c) for c in command], cwd=str(cwd), env=_clean_env(),
                                        capture_stdout=True, capture_stderr=True, check=False)
    out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    assert result.returncode == 0, f"{command}: exit {result.returncode}\n{out}\n{err}"
    return out


def _check_installed(where: dict[str, Any], venv: Path, source: Path) -> None:
    """Everything is imported and read from the venv; the defaults are files, not links."""
    site = Path(where["server"]).parents[1]
    assert site.is_relative_to(venv) and Path(where["tracing"]).is_relative_to(site), where
    assert where["typed"] == [True, True], where
    for key, name in (("config", "webserver.toml"), ("telemetry", "opentelemetry.toml")):
        packaged = Path(where[key])
        assert packaged == site / "server" / "defaults" / name, where
        assert packaged.is_file() and not packaged.is_symlink(), packaged
        assert packaged.read_bytes() == (source / "conf" / name).read_bytes()


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def test_the_built_wheel_installs_and_serves_from_package_data(tmp_path: Path) -> None:
    source, dist, venv, run_dir = (tmp_path / name for name in ("src", "dist", "venv", "run"))
    _copy_source(source)
    run_dir.mkdir()

    # Build (an absolute path: pip would read a bare name as a project on the index).
    await _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", dist, source],
               timeout=BUILD_TIMEOUT, cwd=run_dir)
    wheels = list(dist.glob("webserver-*.whl"))
    assert len(wheels) == 1, wheels

    # A fresh venv (no pip of its own: this pip installs into it), runtime pins only.
    await _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=60, cwd=run_dir)
    python = venv / "bin" / "python"
    await _run([sys.executable, "-m", "pip", "--python", python, "install", "-q",
                "-c", REPO_ROOT / "requirements.lock", wheels[0]], timeout=INSTALL_TIMEOUT, cwd=run_dir)

    where = json.loads(await _run([python, "-c", _WHERE], timeout=60, cwd=run_dir))
    _check_installed(where, venv, source)

    env = process_env({"PYTHONPATH": None, "PYTHONHOME": None, "WEBSERVER_BIND": None})
    with tempfile.TemporaryFile(mode="a+b", prefix="wheel-node-stderr-") as stderr:
        process = await trio.lowlevel.open_process(
            [str(venv / "bin" / "webserver"), "--bind", "127.0.0.1:0"], cwd=str(run_dir), env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
        output = bytearray()

        def describe() -> str:
            stderr.seek(0)
            return (f"--- stdout ---\n{output.decode(errors='replace')}"
                    f"--- stderr ---\n{stderr.read().decode(errors='replace')}")

        try:
            assert process.stdout is not None
            with trio.move_on_after(STARTUP_TIMEOUT):
                while not _LAST_URL_LINE.search(output.decode(errors="replace")):
                    chunk = await process.stdout.receive_some(4096)
                    if not chunk:
                        break
                    output += chunk
            text = output.decode(errors="replace")
            listening = LISTENING.search(text)
            assert listening and _LAST_URL_LINE.search(text), f"no startup lines\n{describe()}"
            # The listening line comes first; the URLs people open follow it.
            assert text.index(listening.group(0)) < text.index("trace viewer:")
            url = listening.group(2)
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
            for path in ("/", "/chat", "/debug/traces"):
                assert f"{url}{path}" in text.split(listening.group(0), 1)[1], describe()

            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                index = await http.get("/")
                assert (index.status_code, index.text) == (200, "Hello World")
                chat = await http.get("/chat")
                assert chat.status_code == 200 and chat.headers["content-type"].startswith("text/html")
                assert chat.content == _read(source / "server" / "web" / "chat.html")
                script = await http.get("/static/chat.js")
                assert script.status_code == 200
                assert script.headers["content-type"].startswith("text/javascript")
                assert script.content == _read(source / "server" / "web" / "chat.js")

            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(STOP_TIMEOUT):
                await process.wait()
            assert process.returncode == 0, f"exit {process.returncode} after SIGTERM\n{describe()}"
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    with trio.move_on_after(5):
                        await process.wait()
                if process.stdout is not None:
                    await process.stdout.aclose()
