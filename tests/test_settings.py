from __future__ import annotations

from pathlib import Path

import pytest

from server.errors import ConfigError
from server.settings import DEFAULT_CONFIG, Settings, load_settings


def test_defaults_match_the_shipped_config() -> None:
    assert load_settings(environ={}) == Settings()
    assert DEFAULT_CONFIG.exists()


def test_layers_file_then_env_then_cli(tmp_path: Path) -> None:
    conf = tmp_path / "w.toml"
    conf.write_text('[server]\nbind = "127.0.0.1:1111"\nhistory_size = 10\nnode_name = "file"\n')
    s = load_settings(config_path=str(conf), environ={"WEBSERVER_BIND": "127.0.0.1:5000",
                                                      "WEBSERVER_HISTORY_SIZE": "20"},
                      overrides={"node_name": "cli", "bind": None})
    assert (s.bind, s.history_size, s.node_name) == ("127.0.0.1:5000", 20, "cli")


def test_config_path_from_environment(tmp_path: Path) -> None:
    conf = tmp_path / "w.toml"
    conf.write_text("max_keys = 7\n")
    assert load_settings(environ={"WEBSERVER_CONFIG": str(conf)}).max_keys == 7


@pytest.mark.parametrize(("text", "needle"), [
    ("[server]\nbnd = '1'\n", "'bnd'"),
    ("history_size = 'ten'\n", "history_size must be int"),
    ("history_size = 0\n", "history_size: must be positive"),
    ("bind = 'nohost'\n", "bind: expected HOST:PORT"),
    ("not toml at all [", "not valid TOML"),
])
def test_bad_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    conf = tmp_path / "w.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_settings(config_path=str(conf), environ={})


def test_unknown_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="WEBSERVER_HISTORYSIZE"):
        load_settings(environ={"WEBSERVER_HISTORYSIZE": "3"})
    with pytest.raises(ConfigError,
                       match="WEBSERVER_SLOW_CONSUMER_TIMEOUT: slow_consumer_timeout must be float"):
        load_settings(environ={"WEBSERVER_SLOW_CONSUMER_TIMEOUT": "soon"})


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(config_path=str(tmp_path / "absent.toml"), environ={})


def test_zero_disables_tcp_user_timeout_only() -> None:
    assert load_settings(environ={"WEBSERVER_TCP_USER_TIMEOUT": "0"}).tcp_user_timeout == 0
    with pytest.raises(ConfigError):
        load_settings(environ={"WEBSERVER_SHUTDOWN_TIMEOUT": "0"})


def test_gc_thresholds_are_checked() -> None:
    assert load_settings(environ={"WEBSERVER_GC_THRESHOLDS": ""}).gc_thresholds == ""
    for bad in ("1,2", "a,b,c", "0,1,1"):
        with pytest.raises(ConfigError, match="gc_thresholds"):
            load_settings(environ={"WEBSERVER_GC_THRESHOLDS": bad})


@pytest.mark.parametrize(("env", "needle"), [
    ({"WEBSERVER_ENGINE": "redis"}, "engine: expected one of memory, mesh, valkey"),
    ({"WEBSERVER_ENGINE": "mesh"}, "needs cluster_bind"),
    ({"WEBSERVER_ENGINE": "valkey", "WEBSERVER_CLUSTER_BIND": "127.0.0.1:4100",
      "WEBSERVER_CLUSTER_SECRET": "x" * 32}, "only for the mesh engine, not 'valkey'"),
    ({"WEBSERVER_ENGINE": "valkey", "WEBSERVER_VALKEY_URL": "http://h:1"}, "expected redis://"),
    ({"WEBSERVER_ENGINE": "valkey", "WEBSERVER_VALKEY_URL": "redis://a:1,redis://b:2"},
     'need valkey_mode = "cluster" or "sentinel"'),
    ({"WEBSERVER_ENGINE": "valkey", "WEBSERVER_VALKEY_MODE": "ring"}, "valkey_mode: expected one of"),
    ({"WEBSERVER_ENGINE": "valkey", "WEBSERVER_VALKEY_PREFIX": "a{b}"}, "valkey_prefix"),
])
def test_engine_settings_are_checked(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        load_settings(environ=env)


def test_a_bad_valkey_url_never_echoes_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={"WEBSERVER_ENGINE": "valkey",
                               "WEBSERVER_VALKEY_URL": "http://user:hunter2@h:1"})
    assert "hunter2" not in str(caught.value)


def test_the_engine_defaults_to_memory_or_mesh_by_cluster_bind() -> None:
    assert load_settings(environ={}).engine_kind == "memory"
    clustered = load_settings(environ={"WEBSERVER_CLUSTER_BIND": "127.0.0.1:4100",
                                       "WEBSERVER_CLUSTER_SECRET": "x" * 32})
    assert clustered.engine_kind == "mesh"
    assert load_settings(environ={"WEBSERVER_ENGINE": "valkey"}).engine_kind == "valkey"
