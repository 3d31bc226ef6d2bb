"""Static checks of the observability stack in docker-compose.yml: the OpenTelemetry
Collector, Tempo's metrics generator, Prometheus, Loki, and Grafana's provisioned
datasources and dashboard.

No Docker engine runs here, so these tests parse the real files and check what the
stack depends on: every config loads, every image is pinned, every mounted file
exists, the components point at each other (service names, ports, datasource uids),
and the dashboard only queries metrics the nodes export. `promtool check config`
and `docker-compose config` run when installed (.ci/install-system-deps installs
both). The nodes' own settings are checked in tests/test_deploy_configs.py.
Plain sync tests: no trio.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.compose_file import bind_mounts, mounted

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"
NODES = ("webserver1", "webserver2", "webserver3")
STACK = ("otel-collector", "tempo", "prometheus", "loki", "grafana")
# Profile `valkey`: the same nodes on the valkey engine, and its server.
VALKEY_PROFILE = ("valkey", "webserver-valkey1", "webserver-valkey2", "webserver-valkey3")
# A stand-in for the secret compose requires; never a real one.
DUMMY_SECRET = "dummy-secret-for-config-validation-only-0123456789"

# Image repository -> the version line the configs here are written for.
IMAGES = {
    "valkey/valkey": re.compile(r"8\.\d+\.\d+"),
    "otel/opentelemetry-collector-contrib": re.compile(r"0\.\d+\.\d+"),
    "grafana/tempo": re.compile(r"2\.\d+\.\d+"),        # conf/tempo.yaml: 2.x format
    "prom/prometheus": re.compile(r"v3\.\d+\.\d+"),
    "grafana/loki": re.compile(r"3\.\d+\.\d+"),          # conf/loki.yaml: TSDB, schema v13, OTLP
    "grafana/grafana": re.compile(r"12\.0\.0"),
}

# What the nodes export, in Prometheus form (tracing/metrics.py), and the type of each.
HISTOGRAMS = {
    "http_server_request_duration_seconds",
    "webserver_chat_broadcast_duration_seconds",
    "webserver_chat_recipients",
    "webserver_kv_operation_duration_seconds",
}
NODE_METRICS = HISTOGRAMS | {
    "http_server_active_requests",
    "webserver_websocket_connections",
    "webserver_websocket_messages_total",
    "webserver_chat_dropped_total",
    "webserver_cluster_members",
    "webserver_cluster_link_messages_total",
    "webserver_cluster_link_reconnects_total",
    "webserver_otel_export_queue_size",
    "webserver_otel_spans_exported_total",
    "webserver_otel_spans_dropped_total",
    "webserver_otel_export_failures_total",
}
# A histogram is queried through its series.
QUERYABLE = NODE_METRICS | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}

# Dashboard panels (by title) and what their queries must contain.
DURATION_PANEL = "Request duration p50 / p95 / p99 by route"
REQUIRED_PANELS = {
    "Request rate by route": ["http_server_request_duration_seconds_count", "by (http_route)"],
    "Error rate (5xx) by route": ['http_response_status_code=~"5.."', "by (http_route)"],
    DURATION_PANEL: ["http_server_request_duration_seconds_bucket", "histogram_quantile(0.5,",
                     "histogram_quantile(0.95,", "histogram_quantile(0.99,", "http_route"],
    "WebSocket connections": ["webserver_websocket_connections"],
    "WebSocket messages in / out": ["webserver_websocket_messages_total", "direction"],
    "Chat broadcast duration": ["webserver_chat_broadcast_duration_seconds_bucket"],
    "Chat recipients per message": ["webserver_chat_recipients_bucket"],
    "Chat messages dropped": ["webserver_chat_dropped_total"],
    "KV latency by operation": ["webserver_kv_operation_duration_seconds_bucket", "kv_operation"],
    "KV unavailable (no quorum, engine down)": ['kv_outcome=~"quorum_failure|engine_down"'],
    "Cluster members by status": ["webserver_cluster_members", "status"],
    "Cluster link reconnects": ["webserver_cluster_link_reconnects_total"],
    "Span export queue size": ["webserver_otel_export_queue_size"],
    "Spans exported / dropped": ["webserver_otel_spans_exported_total", "webserver_otel_spans_dropped_total"],
    "Span export failures": ["webserver_otel_export_failures_total"],
}


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def _load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)






def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command if isinstance(command, list) else str(command).split()


def _flag(service: dict[str, Any], *names: str) -> str:
    """Value of the first `name=value` argument in the service's command."""
    for arg in _command(service):
        name, _, value = arg.partition("=")
        if name in names:
            return value
    raise AssertionError(f"none of {names} in {_command(service)}")


def _host_port(port: str | int, container_port: int) -> bool:
    return str(port).split("#")[0].strip().split(":")[-1].split("/")[0] == str(container_port)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _hostport(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    return parts.hostname or "", parts.port


# --- fixtures -----------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    data: dict[str, Any] = _load_yaml(COMPOSE_FILE)["services"]
    return data


@pytest.fixture(scope="module")
def collector(services: dict[str, Any]) -> dict[str, Any]:
    path = mounted(services, "otel-collector", _flag(services["otel-collector"], "--config"))
    data: dict[str, Any] = _load_yaml(path)
    return data


@pytest.fixture(scope="module")
def prometheus(services: dict[str, Any]) -> dict[str, Any]:
    path = mounted(services, "prometheus", _flag(services["prometheus"], "--config.file"))
    data: dict[str, Any] = _load_yaml(path)
    return data


@pytest.fixture(scope="module")
def tempo(services: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = _load_yaml(mounted(services, "tempo", _flag(services["tempo"], "-config.file")))
    return data


@pytest.fixture(scope="module")
def loki(services: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = _load_yaml(mounted(services, "loki", _flag(services["loki"], "-config.file")))
    return data


@pytest.fixture(scope="module")
def provisioning(services: dict[str, Any]) -> Path:
    return mounted(services, "grafana", "/etc/grafana/provisioning")


@pytest.fixture(scope="module")
def datasources(provisioning: Path) -> dict[str, dict[str, Any]]:
    """Provisioned datasources by type (exactly one of each type)."""
    by_type: dict[str, dict[str, Any]] = {}
    for path in sorted((provisioning / "datasources").glob("*.y*ml")):
        doc = _load_yaml(path)
        assert doc["apiVersion"] == 1, path
        for ds in doc["datasources"]:
            assert ds["type"] not in by_type, f"two {ds['type']} datasources"
            by_type[ds["type"]] = ds
    assert set(by_type) == {"tempo", "prometheus", "loki"}, sorted(by_type)
    return by_type


@pytest.fixture(scope="module")
def dashboard(services: dict[str, Any], provisioning: Path) -> dict[str, Any]:
    providers = _load_yaml(provisioning / "dashboards" / "dashboards.yaml")["providers"]
    assert len(providers) == 1
    provider = providers[0]
    assert provider["type"] == "file"
    # The provider reads the directory compose mounts from conf/grafana/dashboards.
    directory = mounted(services, "grafana", provider["options"]["path"])
    assert directory == (CONF / "grafana" / "dashboards").resolve()
    data: dict[str, Any] = _load_json(directory / "webserver.json")
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels") or [])


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    found = [p for p in _panels(dashboard["panels"]) if p.get("title") == title]
    assert len(found) == 1, f"{len(found)} panels titled {title!r}"
    return found[0]


def _exprs(panel: dict[str, Any]) -> str:
    return "\n".join(t.get("expr", "") for t in panel.get("targets") or [])


# --- every config file loads --------------------------------------------------

CONFIG_FILES = sorted([*CONF.rglob("*.yaml"), *CONF.rglob("*.yml"), *CONF.rglob("*.json")])


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[str(p.relative_to(ROOT)) for p in CONFIG_FILES])
def test_config_file_loads(path: Path) -> None:
    data = _load_json(path) if path.suffix == ".json" else _load_yaml(path)
    assert isinstance(data, dict) and data, f"{path}: empty or not a mapping"


# --- docker-compose.yml ---------------------------------------------------------


def test_compose_has_the_whole_stack(services: dict[str, Any]) -> None:
    assert set(services) == {*STACK, *NODES, *VALKEY_PROFILE}


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    repos = set()
    for name, service in services.items():
        if "image" not in service:
            assert "build" in service, f"{name}: neither image nor build"
            continue
        repo, _, tag = service["image"].rpartition(":")
        assert "@" not in service["image"] and repo, f"{name}: {service['image']}"
        assert repo in IMAGES, f"{name}: unexpected image {repo}"
        assert IMAGES[repo].fullmatch(tag), f"{name}: {service['image']} is not a pinned release tag"
        repos.add(repo)
    assert repos == set(IMAGES)


def test_every_mounted_config_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for source, target in bind_mounts(service):
            host = (ROOT / source).resolve()
            assert host.is_relative_to(CONF), f"{name}: {source} not in ./conf"
            assert host.exists(), f"{name}: {source} (mounted at {target}) does not exist"
        for vol in service.get("volumes") or []:
            if isinstance(vol, str) and vol.startswith((".", "/")):
                assert vol.endswith(":ro"), f"{name}: mount {vol} should be read-only"
    # Each component reads the file compose mounts for it.
    for name, flag in (("otel-collector", "--config"), ("prometheus", "--config.file"),
                       ("tempo", "-config.file"), ("loki", "-config.file")):
        assert mounted(services, name, _flag(services[name], flag)).is_file(), name


def test_named_volumes_declared() -> None:
    compose = _load_yaml(COMPOSE_FILE)
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for vol in service.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"


def test_nodes_export_to_the_collector(services: dict[str, Any], collector: dict[str, Any]) -> None:
    grpc = collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
    host, port = _hostport(grpc)
    assert host == "0.0.0.0", "the receiver must listen beyond localhost: the nodes are other containers"
    for name in NODES:
        endpoint = _env(services[name])["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert endpoint.startswith("http://")
        assert _hostport(endpoint) == ("otel-collector", port), endpoint
        assert "otel-collector" in services[name]["depends_on"]


def test_prometheus_service_flags(services: dict[str, Any]) -> None:
    command = _command(services["prometheus"])
    assert "--web.enable-remote-write-receiver" in command
    features = {f for arg in command if arg.startswith("--enable-feature=")
                for f in arg.split("=", 1)[1].split(",")}
    assert "exemplar-storage" in features
    assert _flag(services["prometheus"], "--storage.tsdb.path") == "/prometheus"
    assert any(_host_port(p, 9090) for p in services["prometheus"]["ports"])


def test_grafana_service(services: dict[str, Any]) -> None:
    grafana = services["grafana"]
    env = _env(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Admin"
    assert {"tempo", "prometheus", "loki"} <= set(grafana["depends_on"])


# --- Prometheus ---------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not on PATH (Debian's prometheus package; .ci/install-system-deps)")
def test_promtool_check_config(services: dict[str, Any]) -> None:
    path = mounted(services, "prometheus", _flag(services["prometheus"], "--config.file"))
    result = subprocess.run(["promtool", "check", "config", str(path)], cwd=ROOT, check=False,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_nodes(prometheus: dict[str, Any]) -> None:
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    web = jobs["webserver"]
    assert web.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in web["static_configs"] for t in sc["targets"]]
    assert sorted(targets) == [f"{n}:4000" for n in NODES]
    assert prometheus["storage"]["exemplars"]["max_exemplars"] > 0


def test_prometheus_scrape_targets_are_services(services: dict[str, Any],
                                                prometheus: dict[str, Any]) -> None:
    for job in prometheus["scrape_configs"]:
        for sc in job["static_configs"]:
            for target in sc["targets"]:
                host, port = _hostport(target)
                assert host == "localhost" or host in services, f"{job['job_name']}: {target}"
                assert port is not None


# --- Tempo --------------------------------------------------------------------


def test_tempo_metrics_generator(tempo: dict[str, Any], services: dict[str, Any]) -> None:
    generator = tempo["metrics_generator"]
    assert generator["storage"]["path"].startswith("/var/tempo/")  # on the tempo-data volume
    writes = generator["storage"]["remote_write"]
    assert writes, "no remote_write"
    for write in writes:
        url = urlsplit(write["url"])
        assert (url.hostname, url.port, url.path) == ("prometheus", 9090, "/api/v1/write"), write["url"]
        assert write["send_exemplars"] is True
    assert "prometheus" in services["tempo"]["depends_on"]
    processors = tempo["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert {"service-graphs", "span-metrics"} <= set(processors)


# --- Loki ---------------------------------------------------------------------


def test_loki_accepts_otlp(loki: dict[str, Any], services: dict[str, Any]) -> None:
    assert loki["server"]["http_listen_port"] == 3100
    assert loki["limits_config"]["allow_structured_metadata"] is True
    latest = loki["schema_config"]["configs"][-1]
    assert (latest["store"], latest["schema"]) == ("tsdb", "v13")  # structured metadata needs both
    assert loki["common"]["path_prefix"] == "/loki"
    assert "loki-data:/loki" in services["loki"]["volumes"]


# --- OpenTelemetry Collector --------------------------------------------------


def test_collector_pipelines_use_defined_components(collector: dict[str, Any]) -> None:
    service = collector["service"]
    pipelines = service["pipelines"]
    assert {"traces", "metrics", "logs"} <= set(pipelines)
    used: dict[str, set[str]] = {"receivers": set(), "processors": set(), "exporters": set()}
    for name, pipeline in pipelines.items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), name
        for kind in used:
            for component in pipeline.get(kind) or []:
                defined = collector.get(kind) or {}
                assert component in defined, f"pipeline {name}: {kind} {component} undefined"
                used[kind].add(component)
    for kind, names in used.items():
        assert set(collector.get(kind) or {}) == names, f"{kind} defined but unused"
    for extension in service.get("extensions") or []:
        assert extension in collector["extensions"], extension


def test_collector_exports_to_the_stack(collector: dict[str, Any], services: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    exporters = collector["exporters"]

    def only_exporter(pipeline: str, kind: str) -> dict[str, Any]:
        names = pipelines[pipeline]["exporters"]
        assert len(names) == 1 and names[0].split("/")[0] == kind, (pipeline, names)
        config: dict[str, Any] = exporters[names[0]]
        return config

    traces = only_exporter("traces", "otlp")
    assert _hostport(traces["endpoint"]) == ("tempo", 4317)
    assert traces["tls"]["insecure"] is True
    metrics = urlsplit(only_exporter("metrics", "prometheusremotewrite")["endpoint"])
    assert (metrics.hostname, metrics.port, metrics.path) == ("prometheus", 9090, "/api/v1/write")
    logs = urlsplit(only_exporter("logs", "otlphttp")["endpoint"])
    assert (logs.hostname, logs.port, logs.path) == ("loki", 3100, "/otlp")
    assert {"tempo", "prometheus", "loki"} <= set(services["otel-collector"]["depends_on"])
    assert any(_host_port(p, 4317) for p in services["otel-collector"]["ports"])


def test_collector_internal_metrics_are_scraped(collector: dict[str, Any],
                                                prometheus: dict[str, Any]) -> None:
    reader = collector["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]["prometheus"]
    assert reader["host"] == "0.0.0.0"
    targets = {t for job in prometheus["scrape_configs"]
               for sc in job["static_configs"] for t in sc["targets"]}
    assert f"otel-collector:{reader['port']}" in targets


def test_collector_processors_come_first_and_batch_last(collector: dict[str, Any]) -> None:
    for name, pipeline in collector["service"]["pipelines"].items():
        processors = pipeline.get("processors") or []
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name


# --- Grafana datasources ------------------------------------------------------


def test_datasources_have_uids_and_service_urls(datasources: dict[str, dict[str, Any]],
                                                services: dict[str, Any]) -> None:
    ports = {"tempo": 3200, "prometheus": 9090, "loki": 3100}
    uids = [ds.get("uid") for ds in datasources.values()]
    assert all(uids) and len(set(uids)) == len(uids), uids
    for kind, ds in datasources.items():
        assert ds["access"] == "proxy"
        assert _hostport(ds["url"]) == (kind, ports[kind]), ds["url"]
        assert kind in services


def test_tempo_links(datasources: dict[str, dict[str, Any]]) -> None:
    tempo = datasources["tempo"]["jsonData"]
    loki_uid = datasources["loki"]["uid"]
    prom_uid = datasources["prometheus"]["uid"]
    logs = tempo["tracesToLogsV2"]
    assert logs["datasourceUid"] == loki_uid
    # OTLP logs keep trace_id as structured metadata: filter on it in a custom query.
    assert logs["customQuery"] is True
    assert re.search(r'\| trace_id="\$\$\{__(trace|span)\.traceId\}"', logs["query"]), logs["query"]
    assert tempo["tracesToMetrics"]["datasourceUid"] == prom_uid
    assert tempo["tracesToMetrics"]["queries"]
    assert tempo["serviceMap"]["datasourceUid"] == prom_uid
    assert tempo["nodeGraph"]["enabled"] is True
    assert tempo["lokiSearch"]["datasourceUid"] == loki_uid


def test_prometheus_exemplars_link_to_tempo(datasources: dict[str, dict[str, Any]]) -> None:
    destinations = datasources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {d["name"] for d in destinations} >= {"trace_id"}
    for destination in destinations:
        assert destination["datasourceUid"] == datasources["tempo"]["uid"]


def test_loki_derived_fields_link_to_tempo(datasources: dict[str, dict[str, Any]]) -> None:
    fields = datasources["loki"]["jsonData"]["derivedFields"]
    assert fields
    for field in fields:
        assert field["datasourceUid"] == datasources["tempo"]["uid"]
        assert field["url"] == "$${__value.raw}"  # `$$`: a literal `$` for Grafana's link variable
    by_label = [f for f in fields if f.get("matcherType") == "label"]
    assert [f["matcherRegex"] for f in by_label] == ["trace_id"]  # OTLP logs' structured metadata
    by_line = [f for f in fields if f.get("matcherType", "regex") == "regex"]
    assert by_line
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    for line in (f"GET /kv/a 200 trace_id={trace_id} span_id=00f067aa0ba902b7",
                 f'{{"msg": "hi", "trace_id": "{trace_id}"}}'):
        matches = [re.search(f["matcherRegex"], line) for f in by_line]
        assert any(m and m.group(1) == trace_id for m in matches), line


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_grafana_variables_are_escaped(provisioning: Path) -> None:
    """Grafana expands $VAR and ${VAR} from its environment in provisioning values:
    its own link variables must be written `$${__...}` / `$$__...`."""
    found = 0
    for path in sorted((provisioning / "datasources").glob("*.y*ml")):
        for value in _strings(_load_yaml(path)):
            unescaped = re.sub(r"\$\$", "", value)  # what is left after the escapes
            assert "$" not in unescaped, f"{path.name}: unescaped $ in {value!r}"
            found += value.count("$$")
    assert found  # the link variables are there, escaped


# --- Grafana dashboard ----------------------------------------------------------


def test_dashboard_has_the_required_panels(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"]
    for title, needles in REQUIRED_PANELS.items():
        exprs = _exprs(_panel(dashboard, title))
        for needle in needles:
            assert needle in exprs, f"{title!r}: {needle!r} not in {exprs!r}"
        assert 'instance=~"$node"' in exprs, f"{title!r} ignores the node variable"


def test_dashboard_targets_use_the_prometheus_datasource(dashboard: dict[str, Any],
                                                        datasources: dict[str, dict[str, Any]]) -> None:
    prom_uid = datasources["prometheus"]["uid"]
    targets = 0
    ids = []
    for panel in _panels(dashboard["panels"]):
        ids.append(panel["id"])
        assert "gridPos" in panel, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == prom_uid, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prom_uid, (panel["title"], target["refId"])
            assert target["expr"].strip()
            targets += 1
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == prom_uid, variable["name"]
    assert targets >= len(REQUIRED_PANELS)


def _metric_tokens(expr: str) -> set[str]:
    return {t for t in re.findall(r"[a-z_]+", expr) if t.startswith(("http_server_", "webserver_"))}


def test_dashboard_queries_only_exported_metrics(dashboard: dict[str, Any]) -> None:
    queries = [t["expr"] for p in _panels(dashboard["panels"]) for t in p.get("targets") or []]
    queries += [v["query"] if isinstance(v["query"], str) else v["query"]["query"]
                for v in dashboard["templating"]["list"] if v["type"] == "query"]
    seen: set[str] = set()
    for expr in queries:
        unknown = _metric_tokens(expr) - QUERYABLE
        assert not unknown, f"{sorted(unknown)} in {expr!r}"
        seen |= _metric_tokens(expr)
    # Every exported metric is on the dashboard somewhere.
    covered = {m for m in NODE_METRICS if any(s == m or s.startswith(f"{m}_") for s in seen)}
    assert covered == NODE_METRICS, sorted(NODE_METRICS - covered)


def test_metric_token_parser() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, http_route) (rate('
            'http_server_request_duration_seconds_bucket{job="$job", http_response_status_code=~"5.."}'
            '[$__rate_interval]))) / webserver_bogus_total')
    assert _metric_tokens(expr) == {"http_server_request_duration_seconds_bucket", "webserver_bogus_total"}


def test_duration_panel_shows_exemplars(dashboard: dict[str, Any]) -> None:
    panel = _panel(dashboard, DURATION_PANEL)
    assert any(t.get("exemplar") is True for t in panel["targets"])
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"


def test_dashboard_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    node = variables["node"]
    query = node["query"] if isinstance(node["query"], str) else node["query"]["query"]
    assert re.fullmatch(r"label_values\(.*,\s*instance\)", query), query
    assert node["includeAll"] is True and node["multi"] is True
    assert node["allValue"] == ".+"
    # `job`: the scraped copy ("webserver") or the one pushed over OTLP ("otlp/webserver").
    assert "job" in variables and variables["job"]["multi"] is False


# --- docker-compose itself ----------------------------------------------------


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose not on PATH (install it with .ci/install-system-deps)")
def test_docker_compose_resolves_the_stack() -> None:
    """`docker-compose config`: valid, and after interpolation every bind mount is an existing path."""
    env = os.environ | {"WEBSERVER_CLUSTER_SECRET": DUMMY_SECRET}
    result = subprocess.run(["docker-compose", "config"], cwd=ROOT, env=env, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {*STACK, *NODES, *VALKEY_PROFILE}
    mounts = 0
    for name, service in resolved["services"].items():
        for vol in service.get("volumes") or []:
            source = vol["source"] if isinstance(vol, dict) else vol.split(":")[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source}"
                mounts += 1
    assert mounts >= 6  # five configs and Grafana's dashboards directory
