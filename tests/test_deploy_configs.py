"""Static checks of the deployment files (docker-compose.yml, what it mounts, and
conf/cluster.example.toml).

Nothing here can run Tempo, Grafana or the nodes' containers, so these tests parse
the real files and check the settings the tracing pipeline and the cluster depend
on. The rest of the observability stack (collector, Prometheus, Loki, Grafana's
datasources and dashboard) is checked in tests/test_observability_stack.py.
Plain sync tests: no trio.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.errors import ConfigError
from server.settings import load_settings
from tests.compose_file import bind_mounts, mounted

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
CLUSTER_EXAMPLE = ROOT / "conf" / "cluster.example.toml"
NODES = ("webserver1", "webserver2", "webserver3")
# A stand-in for the secret compose requires (`${WEBSERVER_CLUSTER_SECRET:?...}`); never a real one.
DUMMY_SECRET = "dummy-secret-for-config-validation-only-0123456789"


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




def test_compose_version_for_debian_docker_compose(compose: dict[str, Any]) -> None:
    # docker-compose 1.29.2 (Debian bookworm) needs an explicit 3.x version.
    assert str(compose["version"]) == "3.8"
    assert {"tempo", "grafana", *NODES} <= set(compose["services"])
    assert "webserver" not in compose["services"]  # the single node became three


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
        for source, _ in bind_mounts(service):
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
    assert any(_host_port(p, 3200) for p in ports), "tempo does not publish 3200"
    # OTLP goes to the collector, which publishes 4317/4318 itself; Tempo's own
    # receiver stays on the compose network (publishing both would clash).
    assert not any(_host_port(p, 4317) or _host_port(p, 4318) for p in ports)
    collector_ports = services["otel-collector"]["ports"]
    assert any(_host_port(p, 4317) for p in collector_ports), "the collector does not publish 4317"


def test_tempo_config(services: dict[str, Any]) -> None:
    config = _load(mounted(services, "tempo", "/etc/tempo.yaml"))
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
    provisioning = mounted(services, "grafana", "/etc/grafana/provisioning")
    assert provisioning.is_dir()


def test_grafana_tempo_datasource(services: dict[str, Any]) -> None:
    provisioning = mounted(services, "grafana", "/etc/grafana/provisioning")
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


@pytest.mark.parametrize("index", [1, 2, 3])
def test_webserver_node_service(services: dict[str, Any], index: int) -> None:
    name = f"webserver{index}"
    web = services[name]
    build = web["build"]
    context = build if isinstance(build, str) else build["context"]
    assert (ROOT / context).resolve() == ROOT
    assert isinstance(build, str) or build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert (ROOT / "Dockerfile").is_file()
    env = _env(web)
    others = [n for n in NODES if n != name]
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317",
        "OTEL_LOGS_EXPORTER": "otlp",  # logs to Loki through the collector
        "WEBSERVER_BIND": "0.0.0.0:4000",
        "WEBSERVER_NODE_NAME": f"webserver@{name}:4000",
        "WEBSERVER_CLUSTER_BIND": "0.0.0.0:4100",
        "WEBSERVER_CLUSTER_ADVERTISE": f"{name}:4100",
        "WEBSERVER_PEERS": ",".join(f"{n}:4100" for n in others),
        # Compose substitution that fails without the variable: no secret is committed.
        "WEBSERVER_CLUSTER_SECRET": "${WEBSERVER_CLUSTER_SECRET:?set WEBSERVER_CLUSTER_SECRET (32+ bytes)}",
    }
    # HTTP published on 4000 + index - 1; the cluster port stays on the compose network.
    assert [str(p).split("#")[0].strip() for p in web["ports"]] == [f"{3999 + index}:4000"]
    assert not any(_host_port(p, 4100) for p in web["ports"])
    assert "otel-collector" in web["depends_on"]


def test_node_environments_are_valid_settings(services: dict[str, Any]) -> None:
    """Each node's environment, with a stand-in secret, loads as the node would load it."""
    names = set()
    for name in NODES:
        env = _env(services[name]) | {"WEBSERVER_CLUSTER_SECRET": DUMMY_SECRET}
        settings = load_settings(environ={k: v for k, v in env.items() if k.startswith("WEBSERVER_")})
        assert settings.clustered and settings.cluster_bind == "0.0.0.0:4100"
        names.add(settings.node_name)
    assert len(names) == len(NODES)


def test_no_secret_is_committed() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for line in text.splitlines():
        if "WEBSERVER_CLUSTER_SECRET=" in line and not line.lstrip().startswith("#"):
            assert line.split("=", 1)[1].startswith("${WEBSERVER_CLUSTER_SECRET:?"), line
    assert not re.search(r"\b[0-9a-f]{32,}\b", text)


def test_cluster_example_config_loads() -> None:
    """conf/cluster.example.toml is one node's file: valid keys, clustered, no secret in it."""
    text = CLUSTER_EXAMPLE.read_text(encoding="utf-8")
    assert not re.search(r"^\s*cluster_secret\s*=", text, re.MULTILINE), "the secret belongs in the env"
    settings = load_settings(config_path=str(CLUSTER_EXAMPLE),
                             environ={"WEBSERVER_CLUSTER_SECRET": DUMMY_SECRET})
    assert settings.clustered
    assert settings.cluster_advertise and settings.peer_addresses
    assert settings.write_quorum + settings.read_quorum > settings.replicas
    # Without the secret a clustered node refuses to start.
    with pytest.raises(ConfigError, match="cluster_secret"):
        load_settings(config_path=str(CLUSTER_EXAMPLE), environ={})


def test_dockerfile_essentials() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert text.startswith("FROM python:3.11-slim")
    assert "pip install -r requirements.lock" in text
    # The project is installed (its defaults are package data); conf/ stays for --config or a mount.
    assert "COPY conf ./conf" in text and "COPY server ./server" in text
    assert "EXPOSE 4000" in text
    assert 'CMD ["python", "-m", "server"]' in text
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".git", ".venv", "test-output"} <= set(ignored)


def _compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker-compose", *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not on PATH (install it with .ci/install-system-deps)",
)
def test_docker_compose_config_validates() -> None:
    result = _compose("config", "-q", env=os.environ | {"WEBSERVER_CLUSTER_SECRET": DUMMY_SECRET})
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not on PATH (install it with .ci/install-system-deps)",
)
def test_docker_compose_requires_the_cluster_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "WEBSERVER_CLUSTER_SECRET"}
    empty = tmp_path / "empty.env"  # instead of any .env a developer keeps the secret in
    empty.write_text("", encoding="utf-8")
    result = _compose("--env-file", str(empty), "config", "-q", env=env)
    assert result.returncode != 0
    assert "set WEBSERVER_CLUSTER_SECRET" in result.stderr, result.stderr


# -- profile "valkey": nodes whose shared state lives in the valkey service ------------
VALKEY_NODES = ("webserver-valkey1", "webserver-valkey2", "webserver-valkey3")


def _command_list(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    return [str(c) for c in command] if isinstance(command, list) else command.split()


def _option(command: list[str], name: str) -> str:
    """The value after `--name` in a valkey-server command line."""
    assert name in command, command
    return command[command.index(name) + 1]


def test_valkey_service_keeps_an_append_only_file(services: dict[str, Any], compose: dict[str, Any]) -> None:
    valkey = services["valkey"]
    repo, _, tag = valkey["image"].rpartition(":")
    assert repo == "valkey/valkey" and re.fullmatch(r"8\.\d+\.\d+", tag), valkey["image"]
    assert valkey.get("profiles") == ["valkey"]  # `docker-compose up` alone does not start it
    command = _command_list(valkey)
    assert command[0] == "valkey-server"
    assert _option(command, "--appendonly") == "yes"
    assert _option(command, "--appendfsync") == "everysec"
    # The AOF lives in a named volume at the image's working directory, /data.
    volumes = [v.split(":") for v in valkey["volumes"] if isinstance(v, str)]
    assert ["valkey-data", "/data"] in volumes, valkey["volumes"]
    assert "valkey-data" in (compose.get("volumes") or {})
    test = valkey["healthcheck"]["test"]
    assert (test if isinstance(test, str) else " ".join(test)).endswith("valkey-cli ping"), test
    assert not valkey.get("ports"), "Valkey has no password: it stays on the compose network"


@pytest.mark.parametrize("name", VALKEY_NODES)
def test_valkey_profile_node_uses_the_valkey_service(services: dict[str, Any], name: str) -> None:
    node = services[name]
    assert node.get("profiles") == ["valkey"]
    build = node["build"]
    assert (ROOT / (build if isinstance(build, str) else build["context"])).resolve() == ROOT
    env = _env(node)
    assert env == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector:4317",
        "OTEL_LOGS_EXPORTER": "otlp",
        "WEBSERVER_BIND": "0.0.0.0:4000",
        "WEBSERVER_NODE_NAME": f"webserver@{name}:4000",
        # Where the others reach it (the trace viewer asks peers there): not 0.0.0.0.
        "WEBSERVER_ADVERTISE_URL": f"http://{name}:4000",
        "WEBSERVER_ENGINE": "valkey",
        "WEBSERVER_VALKEY_URL": "redis://valkey:6379/0",
    }
    # Started once Valkey answers its health check (and after the collector).
    depends = node["depends_on"]
    assert isinstance(depends, dict), depends
    assert depends["valkey"] == {"condition": "service_healthy"}
    assert "otel-collector" in depends
    assert [str(p).split("#")[0].strip() for p in node["ports"]] == \
        [f"{4010 + VALKEY_NODES.index(name)}:4000"]


def test_valkey_profile_node_environments_are_valid_settings(services: dict[str, Any]) -> None:
    """Only real WEBSERVER_* settings: each node's environment loads as the node would
    load it, the valkey engine on the valkey service, with no mesh settings at all."""
    names = set()
    for name in VALKEY_NODES:
        env = {k: v for k, v in _env(services[name]).items() if k.startswith("WEBSERVER_")}
        settings = load_settings(environ=env)
        assert settings.engine_kind == "valkey" and settings.clustered
        assert settings.valkey_mode == "standalone"
        assert settings.valkey_urls == ["redis://valkey:6379/0"]
        assert not settings.cluster_bind and not settings.peer_addresses and not settings.cluster_secret
        names.add(settings.node_name)
    assert len(names) == len(VALKEY_NODES)
    assert "valkey" in services  # the URL's host is a service on the compose network


def test_valkey_profile_leaves_the_mesh_nodes_alone(services: dict[str, Any]) -> None:
    """The mesh nodes start without a profile, and the two sets of nodes publish
    different host ports, so `--profile valkey` can run them side by side."""
    published: list[str] = []
    for name in (*NODES, *VALKEY_NODES):
        published += [str(p).split("#")[0].strip().split(":")[0] for p in services[name]["ports"]]
    assert len(published) == len(set(published)), published
    for name in NODES:
        assert "profiles" not in services[name], name
        assert "WEBSERVER_ENGINE" not in _env(services[name])  # mesh, from cluster_bind


@pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not on PATH (install it with .ci/install-system-deps)",
)
def test_docker_compose_config_validates_with_the_valkey_profile() -> None:
    result = _compose("--profile", "valkey", "config", "-q",
                      env=os.environ | {"WEBSERVER_CLUSTER_SECRET": DUMMY_SECRET})
    assert result.returncode == 0, result.stderr
