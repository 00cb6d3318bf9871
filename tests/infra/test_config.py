"""Settings: defaults ← YAML (the guide's layout too) ← LEWIS_* environment; typed; one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.config import load_settings, parse_size, redact_url

GUIDE_YAML = """
performance:
  max_workers: 16
  max_concurrent_scans: 10
  thread_pool_size: 20
  cache:
    enabled: true
    backend: "redis"
    default_ttl: 3600
    max_memory: "512MB"
  database:
    pool_size: 20
    max_overflow: 30
    pool_timeout: 30
    pool_recycle: 3600
    echo_sql: false
  network:
    connection_timeout: 30
    read_timeout: 60
    keep_alive: true
    max_connections: 100
  memory:
    max_heap_size: "2GB"
    gc_threshold: 0.8
    cleanup_interval: 300
  monitoring:
    metrics_interval: 10
    health_check_interval: 30
    performance_logging: true
"""


def test_the_guides_performance_yaml_loads_and_every_value_has_a_home(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_text(GUIDE_YAML.replace("pool_size: 20", "pool_size: 7"))
    s = load_settings(env={}, cwd=tmp_path)
    assert s.database.pool_size == 7  # from the file, not the default
    assert s.cache.max_memory == 512 * 2**20 and s.memory.max_heap_size == 2 * 2**30
    assert (s.performance.max_concurrent_scans, s.network.max_connections) == (10, 100)
    assert s.monitoring.health_check_interval == 30.0 and s.memory.gc_threshold == 0.8


def test_environment_beats_file_beats_defaults(tmp_path: Path) -> None:
    cfg = tmp_path / "custom.yaml"
    cfg.write_text("network:\n  max_connections: 50\n  limit_per_host: 5\n")
    s = load_settings(env={"LEWIS_CONFIG": str(cfg), "LEWIS_NETWORK_MAX_CONNECTIONS": "70",
                           "LEWIS_SCOPE_ALLOW": "127.0.0.0/8, ::1"}, cwd=tmp_path)
    assert (s.network.max_connections, s.network.limit_per_host) == (70, 5)
    assert s.network.read_timeout == 60.0  # default
    assert s.scope.allow == ("127.0.0.0/8", "::1")


@pytest.mark.parametrize(("env", "message"), [
    ({"LEWIS_NETWORK_MAX_CONNECTIONS": "many"}, "network.max_connections: expected an integer"),
    ({"LEWIS_DATABASE_POOL_SIZE": "-1"}, "database.pool_size: must be ≥ 1"),
    ({"LEWIS_MEMORY_GC_THRESHOLD": "1.5"}, "memory.gc_threshold: must be ≤ 1.0"),
    ({"LEWIS_DATABASE_ECHO_SQL": "perhaps"}, "database.echo_sql: expected true or false"),
    ({"LEWIS_MEMORY_MAX_HEAP_SIZE": "two gigs"}, "memory.max_heap_size: expected a size"),
    ({"LEWIS_WORKERS_IO_POOL": "gevent"}, "workers.io_pool: must be one of threads, prefork, solo"),
    ({"LEWIS_NOPE_X": "1"}, "LEWIS_NOPE_X: unknown setting"),
    ({"LEWIS_NETWORK_MAXCONNECTIONS": "1"}, "network.maxconnections: unknown key"),
    ({"LEWIS_TASKS_SOFT_TIME_LIMIT": "500", "LEWIS_TASKS_TIME_LIMIT": "100"},
     "tasks.soft_time_limit: must not exceed tasks.time_limit"),
    ({"LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "1"},  # the default ping waits 2 s
     "monitoring.ping_timeout: must be shorter than monitoring.health_check_interval"),
])
def test_a_bad_value_names_the_key_and_the_problem(env: dict[str, str], message: str,
                                                   tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(env=env, cwd=tmp_path)


def test_bad_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read it"):
        load_settings(env={"LEWIS_CONFIG": str(tmp_path / "absent.yaml")}, cwd=tmp_path)
    (tmp_path / "lewis.yaml").write_text("network: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(env={}, cwd=tmp_path)
    (tmp_path / "lewis.yaml").write_text("networks:\n  a: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'networks'"):
        load_settings(env={}, cwd=tmp_path)


def test_settings_are_frozen_and_secrets_redacted(tmp_path: Path) -> None:
    s = load_settings(env={"LEWIS_BROKER_URL": "redis://:s3cret@127.0.0.1:6379/0"}, cwd=tmp_path)
    with pytest.raises(AttributeError):
        s.network.max_connections = 1  # type: ignore[misc]
    assert "s3cret" not in str(s.redacted())
    assert redact_url("rediss://user:pw@h:1/0") == "rediss://user:***@h:1/0"
    assert parse_size("1.5KB") == 1536 and parse_size(10) == 10


def test_a_running_stack_is_found_without_flags(tmp_path: Path) -> None:
    home = tmp_path / ".lewis"
    home.mkdir()
    (home / "stack.json").write_text('{"broker_url": "redis://127.0.0.1:1234/0"}')
    s = load_settings(env={}, cwd=tmp_path)
    assert s.broker.url == "redis://127.0.0.1:1234/0"
    assert s.database.url == f"sqlite:///{home / 'lewis.db'}"
    # an explicit broker always wins over the stack file
    s = load_settings(env={"LEWIS_BROKER_URL": "redis://127.0.0.1:9/0"}, cwd=tmp_path)
    assert s.broker.url == "redis://127.0.0.1:9/0"
