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
    s = load_settings(
        env={
            "LEWIS_CONFIG": str(cfg),
            "LEWIS_NETWORK_MAX_CONNECTIONS": "70",
            "LEWIS_SCOPE_ALLOW": "127.0.0.0/8, ::1",
        },
        cwd=tmp_path,
    )
    assert (s.network.max_connections, s.network.limit_per_host) == (70, 5)
    assert s.network.read_timeout == 60.0  # default
    assert s.scope.allow == ("127.0.0.0/8", "::1")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LEWIS_NETWORK_MAX_CONNECTIONS": "many"}, "network.max_connections: expected an integer"),
        ({"LEWIS_DATABASE_POOL_SIZE": "-1"}, "database.pool_size: must be ≥ 0"),
        ({"LEWIS_MEMORY_GC_THRESHOLD": "1.5"}, "memory.gc_threshold: must be ≤ 1.0"),
        ({"LEWIS_DATABASE_ECHO_SQL": "perhaps"}, "database.echo_sql: expected true or false"),
        ({"LEWIS_MEMORY_MAX_HEAP_SIZE": "two gigs"}, "memory.max_heap_size: expected a size"),
        (
            {"LEWIS_WORKERS_IO_POOL": "gevent"},
            "workers.io_pool: must be one of threads, prefork, solo",
        ),
        ({"LEWIS_NOPE_X": "1"}, "LEWIS_NOPE_X: unknown setting"),
        ({"LEWIS_NETWORK_MAXCONNECTIONS": "1"}, "network.maxconnections: unknown key"),
        (
            {"LEWIS_TASKS_SOFT_TIME_LIMIT": "500", "LEWIS_TASKS_TIME_LIMIT": "100"},
            "tasks.soft_time_limit: must not exceed tasks.time_limit",
        ),
        (
            {"LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "1"},  # the default ping waits 2 s
            "monitoring.ping_timeout: must be shorter than monitoring.health_check_interval",
        ),
        # (Hypothesis found it: the path's resolve raised ValueError, not a ConfigError)
        ({"LEWIS_STACK_HOME": "\x00"}, "stack.home: contains a NUL character"),
    ],
)
def test_a_bad_value_names_the_key_and_the_problem(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
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


# ---------------------------------------------------------------- numbers that are not numbers


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # NaN compares false with every bound: it passed ≥ 0.01 and reached the sockets
        ({"LEWIS_NETWORK_READ_TIMEOUT": "nan"}, "network.read_timeout: expected a finite number"),
        ({"LEWIS_NETWORK_READ_TIMEOUT": "NaN"}, "network.read_timeout: expected a finite number"),
        ({"LEWIS_SCAN_TIMEOUT": "inf"}, "scan.timeout: expected a finite number"),
        ({"LEWIS_HTTP_TIMEOUT": "-Infinity"}, "http.timeout: expected a finite number"),
        ({"LEWIS_MEMORY_GC_THRESHOLD": "nan"}, "memory.gc_threshold: expected a finite number"),
        (
            {"LEWIS_NETWORK_CONNECTION_TIMEOUT": "1e999"},
            "network.connection_timeout: expected a finite",
        ),
        # past any timer the OS keeps (time.sleep and Event.wait overflow near 9.2e9 s)
        ({"LEWIS_STACK_BEAT_LOCK_TIMEOUT": "99999999999999"}, "stack.beat_lock_timeout: must be ≤"),
        ({"LEWIS_MONITORING_RETENTION": "1" + "0" * 30}, "monitoring.retention: must be ≤"),
        ({"LEWIS_LOADTEST_MAX_DURATION": "1e300"}, "loadtest.max_duration: must be ≤"),
        ({"LEWIS_MEMORY_MAX_HEAP_SIZE": "9" * 400 + "GB"}, "memory.max_heap_size: must be ≤"),
        ({"LEWIS_CACHE_MAX_MEMORY": "99999999TB"}, "cache.max_memory: must be ≤"),
        # int() and float() read any Unicode digits: '١٢' would be 12
        ({"LEWIS_NETWORK_MAX_CONNECTIONS": "١٢"}, "network.max_connections: expected an integer"),
        ({"LEWIS_NETWORK_READ_TIMEOUT": "٣.٥"}, "network.read_timeout: expected a number"),
        ({"LEWIS_CACHE_MAX_MEMORY": "٥١٢MB"}, "cache.max_memory: expected a size"),
    ],
)
def test_nan_infinities_huge_and_unicode_numbers_are_refused(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(env=env, cwd=tmp_path)


def test_yaml_nan_infinity_and_huge_integers_are_refused(tmp_path: Path) -> None:
    for text, message in [
        ("network:\n  read_timeout: .nan\n", "expected a finite number"),
        ("scan:\n  timeout: .inf\n", "expected a finite number"),
        # float(10**400) raises OverflowError
        (f"scan:\n  timeout: {10**400}\n", "scan.timeout: expected a number"),
        (f"scan:\n  retries: {10**400}\n", "scan.retries: must be ≤"),
    ]:
        (tmp_path / "lewis.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_settings(env={}, cwd=tmp_path)


# ---------------------------------------------------------------- files, URLs, foreign variables


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_bytes(b"network:\n  max_connections: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"config file .*lewis.yaml: not UTF-8 text \(byte 0xff"):
        load_settings(env={}, cwd=tmp_path)


def test_a_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_text("network: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(env={}, cwd=tmp_path)


def test_a_section_beside_the_guides_layout_must_be_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "lewis.yaml").write_text("cache: [1]\nperformance:\n  cache:\n    enabled: true\n")
    with pytest.raises(ConfigError, match="setting cache: expected a mapping"):
        load_settings(env={}, cwd=tmp_path)


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("LEWIS_BROKER_URL", "amqp://guest:pw@127.0.0.1:5672//"),
        ("LEWIS_BROKER_URL", "foo://127.0.0.1:1/0"),
        ("LEWIS_BROKER_URL", "127.0.0.1:6379"),
        ("LEWIS_BROKER_URL", "unix:///tmp/redis.sock"),  # kombu has no such transport
        ("LEWIS_BROKER_RESULT_BACKEND", "rpc://"),
        ("LEWIS_CACHE_URL", "memcached://127.0.0.1:11211"),
    ],
)
def test_an_unknown_url_scheme_names_the_key(key: str, url: str, tmp_path: Path) -> None:
    setting = key[len("LEWIS_") :].lower().replace("_", ".", 1)
    with pytest.raises(ConfigError, match=f"setting {setting}: .* is not a Redis URL") as err:
        load_settings(env={key: url}, cwd=tmp_path)
    assert "pw" not in str(err.value)  # a password in a refused URL is masked too


def test_redis_urls_of_every_supported_scheme_load(tmp_path: Path) -> None:
    s = load_settings(
        env={
            "LEWIS_BROKER_URL": "rediss://:pw@127.0.0.1:6380/0",
            "LEWIS_BROKER_RESULT_BACKEND": "unix:///tmp/r.sock?db=1",
            "LEWIS_CACHE_URL": "REDIS://127.0.0.1:6379/2",
        },
        cwd=tmp_path,
    )
    assert s.broker.url.startswith("rediss://") and s.result_backend.startswith("unix://")


def test_the_setup_scripts_own_variables_are_not_settings(tmp_path: Path) -> None:
    # scripts/_venv.sh reads LEWIS_VENV and LEWIS_EXTRAS, scripts/test LEWIS_TEST_PROCESSES; a
    # user who sets them runs lewis too (and the suite's own processes see them)
    env = {"LEWIS_VENV": "/opt/venv", "LEWIS_EXTRAS": "dev,postgres", "LEWIS_TEST_PROCESSES": "3"}
    s = load_settings(env=env, cwd=tmp_path)
    assert s == load_settings(env={}, cwd=tmp_path)


def test_a_secret_setting_is_read_from_its_file(tmp_path: Path) -> None:
    # Given a Docker/Kubernetes secret file holding a broker URL (with the newline editors add)
    secret = tmp_path / "broker_url"
    secret.write_text("redis://:Xq9-w2@10.1.2.3:6380/4\n")
    # When the setting names the file
    s = load_settings(
        env={"LEWIS_BROKER_URL_FILE": str(secret), "LEWIS_STACK_FLOWER_PASSWORD_FILE": str(secret)},
        cwd=tmp_path,
    )
    # Then the value is the file's, without the newline, and stays secret
    assert s.broker.url == "redis://:Xq9-w2@10.1.2.3:6380/4"
    assert s.stack.flower_password == "redis://:Xq9-w2@10.1.2.3:6380/4"
    assert "Xq9-w2" not in str(s.redacted())


@pytest.mark.parametrize(
    "env, message",
    [
        (
            {"LEWIS_BROKER_URL_FILE": "/nonexistent/lewis-secret"},
            "environment LEWIS_BROKER_URL_FILE: cannot read /nonexistent/lewis-secret",
        ),
        (
            {"LEWIS_SCAN_CONCURRENCY_FILE": "/etc/hostname"},
            "environment LEWIS_SCAN_CONCURRENCY_FILE: only secret settings are read from files",
        ),
        (
            {"LEWIS_DATABASE_URL_FILE": "/etc/hostname", "LEWIS_DATABASE_URL": "sqlite://"},
            "environment LEWIS_DATABASE_URL_FILE: LEWIS_DATABASE_URL is set too",
        ),
    ],
)
def test_secret_files_fail_with_one_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, cwd=tmp_path)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "env, key",
    [
        ({"LEWIS_BROKER_URL": "redis://:change-me@redis:6379/0"}, "broker.url"),
        ({"LEWIS_DATABASE_URL": "postgresql+psycopg://lewis:CHANGE-ME@pg/lewis"}, "database.url"),
        ({"LEWIS_STACK_FLOWER_PASSWORD": "change-me"}, "stack.flower_password"),
        ({"LEWIS_CACHE_URL": "redis://:change%2Dme@cache:6379/0"}, "cache.url"),
    ],
)
def test_the_examples_placeholder_passwords_are_refused(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    # docker/env.example ships 'change-me': a stack started on it is open to every reader
    with pytest.raises(ConfigError, match=f"setting {key}: holds the example's placeholder"):
        load_settings(env=env, cwd=tmp_path)


def test_real_passwords_that_merely_contain_the_placeholder_are_kept(tmp_path: Path) -> None:
    s = load_settings(
        env={
            "LEWIS_BROKER_URL": "redis://:change-me-7Hq2@redis:6379/0",
            "LEWIS_STACK_FLOWER_PASSWORD": "xchange-me",
        },
        cwd=tmp_path,
    )
    assert s.broker.url.endswith("change-me-7Hq2@redis:6379/0")


@pytest.mark.parametrize("argv", [["worker", "io"], ["beat"], ["config"]])
def test_a_real_worker_beat_or_command_refuses_the_placeholder_password(
    tmp_path: Path, argv: list[str]
) -> None:
    import os
    import subprocess
    import sys

    # the process itself, as compose would start it with docker/env.example unchanged
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LEWIS_")},
        "LEWIS_BROKER_URL": "redis://:change-me@127.0.0.1:1/0",
        "LEWIS_STACK_HOME": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "lewis_tasks.cli", *argv],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "setting broker.url: holds the example's placeholder password" in done.stderr
    assert "Traceback" not in done.stderr
