"""Static checks of the deployment files (docker-compose.yml and what it mounts).

Nothing here can run Tempo or Grafana, so these tests parse the real files and
check the settings the tracing pipeline depends on. Plain sync tests: no trio.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _env(service: dict[str, Any]) -> dict[str, str]:
    """Compose `environment` as a dict, whether written as a list or a mapping."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {key: value for key, value in pairs}
    return {k: str(v) for k, v in env.items()}


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) for each bind mount (host path starts with . or /)."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):  # long syntax
            if vol.get("type") == "bind":
                mounts.append((vol["source"], vol["target"]))
            continue
        source, target = vol.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _host_port(port: str | int, container_port: int) -> bool:
    return str(port).split(":")[-1].split("/")[0] == str(container_port)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _load(COMPOSE_FILE)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = compose["services"]
    return data


def _mounted_file(services: dict[str, Any], service: str, target: str) -> Path:
    """Host path (under the repo) bind-mounted at `target` in `service`."""
    for source, tgt in _bind_mounts(services[service]):
        if tgt == target:
            return (ROOT / source).resolve()
    raise AssertionError(f"{service}: nothing bind-mounted at {target}")


def test_compose_version_for_debian_docker_compose(compose: dict[str, Any]) -> None:
    # docker-compose 1.29.2 (Debian bookworm) needs an explicit 3.x version.
    assert str(compose["version"]) == "3.8"
    assert {"tempo", "grafana", "webserver"} <= set(compose["services"])


def test_images_are_pinned(services: dict[str, Any]) -> None:
    tempo_image = services["tempo"]["image"]
    # conf/tempo.yaml is written in the Tempo 2.x format.
    assert tempo_image.startswith("grafana/tempo:2."), tempo_image
    grafana_image = services["grafana"]["image"]
    assert grafana_image.startswith("grafana/grafana:"), grafana_image
    assert not grafana_image.endswith(":latest")


def test_every_bind_mount_under_conf_exists(services: dict[str, Any]) -> None:
    checked = 0
    for name, service in services.items():
        for source, _ in _bind_mounts(service):
            host = (ROOT / source).resolve()
            assert host.is_relative_to(ROOT / "conf"), f"{name}: {source} not in ./conf"
            assert host.exists(), f"{name}: mounted path {source} does not exist"
            checked += 1
    assert checked >= 2  # tempo config + grafana provisioning at least


def test_tempo_service(services: dict[str, Any]) -> None:
    tempo = services["tempo"]
    command = tempo["command"]
    command = command if isinstance(command, list) else command.split()
    assert "-config.file=/etc/tempo.yaml" in command
    ports = tempo["ports"]
    for port in (4317, 3200):
        assert any(_host_port(p, port) for p in ports), f"tempo does not publish {port}"


def test_tempo_config(services: dict[str, Any]) -> None:
    config = _load(_mounted_file(services, "tempo", "/etc/tempo.yaml"))
    assert config["server"]["http_listen_port"] == 3200
    protocols = config["distributor"]["receivers"]["otlp"]["protocols"]
    # Must be 0.0.0.0, not localhost: the webserver container connects from outside.
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    trace = config["storage"]["trace"]
    assert trace["backend"] == "local"
    assert trace["local"]["path"].startswith("/var/tempo")
    assert trace["wal"]["path"] == "/var/tempo/wal"


def test_grafana_service(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Admin"
    assert env["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert any(_host_port(p, 3000) for p in grafana["ports"])
    assert "tempo" in grafana["depends_on"]
    provisioning = _mounted_file(services, "grafana", "/etc/grafana/provisioning")
    assert provisioning.is_dir()


def test_grafana_tempo_datasource(services: dict[str, Any]) -> None:
    provisioning = _mounted_file(services, "grafana", "/etc/grafana/provisioning")
    files = sorted((provisioning / "datasources").glob("*.y*ml"))
    assert files, "no datasource provisioning files"
    datasources = []
    for path in files:
        doc = _load(path)
        assert doc["apiVersion"] == 1, path
        datasources += doc["datasources"]
    tempo = [ds for ds in datasources if ds.get("uid") == "tempo"]
    assert len(tempo) == 1, datasources
    ds = tempo[0]
    assert ds["type"] == "tempo"
    assert ds["url"] == "http://tempo:3200"
    assert ds["access"] == "proxy"
    assert ds["isDefault"] is True


def test_webserver_service(services: dict[str, Any]) -> None:
    web = services["webserver"]
    build = web["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (ROOT / context).resolve() == ROOT
    assert (ROOT / "Dockerfile").is_file()
    env = _env(web)
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://tempo:4317"
    assert env["WEBSERVER_BIND"] == "0.0.0.0:4000"
    assert env["WEBSERVER_NODE_NAME"] == "webserver@webserver:4000"
    assert any(str(p) == "4000:4000" for p in web["ports"])
    assert "tempo" in web["depends_on"]


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert text.startswith("FROM python:3.11-slim")
    assert "pip install -r requirements.lock" in text
    # Run from the source tree: settings look for conf/ beside the packages.
    assert "COPY conf ./conf" in text and "COPY server ./server" in text
    assert "EXPOSE 4000" in text
    assert 'CMD ["python", "-m", "server"]' in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "test-output"} <= set(ignored)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not on PATH (install it with .ci/install-system-deps)",
)
def test_docker_compose_config_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "config", "-q"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
