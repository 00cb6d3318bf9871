"""docker-compose.yml names only real `lewis` commands and real LEWIS_* settings.

No Docker engine runs here, so the file is checked the way compose would read it: YAML with
anchors, ``${VAR…}`` interpolated from docker/env.example, each command walked through the
click group, each service's LEWIS_* environment loaded by the settings loader (which refuses
unknown names and bad values).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from lewis_tasks.errors import ConfigError
from lewis_tasks.infra.config import load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENV_EXAMPLE = ROOT / "docker" / "env.example"
APP_IMAGE = "lewis-tasks:latest"
WORKERS = ("worker-io", "worker-cpu", "worker-control")
REQUIRED = {
    "redis",
    "cache",
    "postgres",
    "migrate",
    *WORKERS,
    "beat",
    "flower",
    "monitor",
    "prometheus",
}
NOT_APP = {"redis", "cache", "postgres", "prometheus"}

_VAR = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}"
    r"|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: $$, ${V}, ${V:-default}, ${V-default}, ${V:?err}, ${V?err}."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3)
        value = env.get(name)
        if op in (":-", "-"):
            return value if value or (op == "-" and value is not None) else arg
        if op in (":?", "?") and not value:
            raise AssertionError(
                f"compose needs ${{{name}}} ({arg}); docker/env.example must set it"
            )
        return value or ""

    return _VAR.sub(one, text)


def _walk(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_walk(x, env) for x in node]
    if isinstance(node, dict):
        return {k: _walk(v, env) for k, v in node.items()}
    return node


def example_env() -> dict[str, str]:
    env = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.split("#")[0].strip()
    return env


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def operator_env() -> dict[str, str]:
    """The example as an operator fills it in: every placeholder replaced by a real secret."""
    return {k: f"{k.lower()}-Q7v2" if v == "change-me" else v for k, v in example_env().items()}


@pytest.fixture(scope="module")
def services(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return _walk(raw["services"], operator_env())


def test_the_examples_placeholder_passwords_stop_every_app_container(raw: dict[str, Any]) -> None:
    # Given docker/env.example copied to .env as it is
    as_shipped = _walk(raw["services"], example_env())
    # Then every LEWIS container's settings are refused, naming a placeholder secret
    for service in app_services(as_shipped).values():
        env = {k: str(v) for k, v in service.get("environment", {}).items()}
        with pytest.raises(ConfigError, match="holds the example's placeholder password"):
            load_settings(env=env, cwd=ROOT)


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("image") == APP_IMAGE}


def resolve_command(argv: list[str]) -> click.Context:
    """The click context `argv` would run in; fails on an unknown command or bad arguments."""
    from lewis_tasks.cli import cli

    assert argv[0] == "lewis", f"{argv}: app services run the `lewis` entry point"
    cmd: click.Command = cli
    ctx = click.Context(cli, info_name="lewis")
    args, name = argv[1:], "lewis"
    while isinstance(cmd, click.Group):
        name, sub, args = cmd.resolve_command(ctx, args)  # UsageError if unknown
        assert sub is not None and name is not None, argv
        parent, cmd = ctx, sub
        ctx = click.Context(cmd, info_name=name, parent=parent)
    return cmd.make_context(name, list(args), parent=ctx.parent)


def test_every_required_service_is_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= REQUIRED


def test_every_app_command_is_a_real_lewis_command(services: dict[str, dict[str, Any]]) -> None:
    apps = app_services(services)
    assert set(apps) == REQUIRED - NOT_APP
    seen = {}
    for name, service in apps.items():
        ctx = resolve_command(service["command"])
        seen[name] = (ctx.command_path, dict(ctx.params))
    assert seen["worker-io"] == ("lewis worker", {"profile": "io"})
    assert seen["worker-cpu"] == ("lewis worker", {"profile": "cpu"})
    assert seen["worker-control"] == ("lewis worker", {"profile": "control"})
    assert seen["migrate"][0] == "lewis db upgrade"
    assert seen["beat"][0] == "lewis beat"
    assert seen["flower"][0] == "lewis flower"
    assert seen["monitor"][0] == "lewis monitor"


def test_the_command_walk_rejects_what_is_not_real() -> None:
    with pytest.raises(click.UsageError):
        resolve_command(["lewis", "wrker", "io"])
    with pytest.raises(click.BadParameter):
        resolve_command(["lewis", "worker", "gpu"])


def test_every_lewis_variable_is_a_real_setting(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    for name, service in services.items():
        env = {
            k: str(v)
            for k, v in (service.get("environment") or {}).items()
            if k.startswith("LEWIS_")
        }
        if not env:
            continue
        settings = load_settings(env=env, cwd=tmp_path)  # ConfigError on any unknown name
        if name not in app_services(services):
            continue
        assert urlsplit(settings.broker.url).hostname == "redis", name
        assert urlsplit(settings.cache_url).hostname == "cache", name
        assert settings.database.url.startswith("postgresql+psycopg://"), name
        assert urlsplit(settings.database.url).hostname == "postgres", name
        replicas = 8  # a generous scale-out must still fit postgres' connection limit
        per_process = _peak_connections(settings, name)
        assert per_process * replicas <= _pg_max_connections(services), name


def _peak_connections(settings: Any, service: str) -> int:
    """The most connections one container of ``service`` opens: its role's pool (every cpu
    child has one) or the explicit pool_size + max_overflow."""
    from lewis_tasks.infra.database import pool_for
    from workers import worker_options

    role = service.removeprefix("worker-") if service.startswith("worker-") else "command"
    size, overflow = pool_for(settings.database, role)
    processes = 1
    if role == "cpu":
        opts = worker_options("cpu", settings)
        processes = int(opts[opts.index("-c") + 1])
    return (size + overflow) * processes


def _pg_max_connections(services: dict[str, dict[str, Any]]) -> int:
    command = services["postgres"].get("command") or []
    for arg in command:
        if arg.startswith("max_connections="):
            return int(arg.split("=", 1)[1])
    return 100


def test_workers_can_be_scaled(services: dict[str, dict[str, Any]]) -> None:
    for name in (*WORKERS, "beat"):
        service = services[name]
        assert "container_name" not in service and "ports" not in service, name
        assert "hostname" not in service, name  # each replica needs its own Celery node name
        assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for service in services.values():
        assert set(service.get("depends_on") or {}) <= set(services)


def health_command(service: dict[str, Any]) -> list[str]:
    """The healthcheck's argv as the container would run it (CMD, or CMD-SHELL through sh
    with ``$(hostname)`` standing for the container's host name)."""
    test = service["healthcheck"]["test"]
    if test[0] == "CMD":
        return list(test[1:])
    assert test[0] == "CMD-SHELL" and len(test) == 2, test
    return shlex.split(test[1].replace("$(hostname)", "container-host"))


def test_workers_and_beat_have_lewis_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name in (*WORKERS, "beat"):
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        argv = health_command(services[name])
        ctx = resolve_command(argv)
        assert ctx.command_path == "lewis health", (name, argv)
        if name == "beat":
            assert ctx.params["beat"] is True
        else:  # this container's worker, by its host name (Celery's %h in the node name)
            assert ctx.params["worker_name"] == "container-host", (name, argv)
        # the probe's own deadline (0.6 s) fits the healthcheck's timeout
        assert float(str(check["timeout"]).rstrip("s")) > ctx.params["timeout"], name
        assert check.get("retries", 3) >= 2, name


def test_every_long_running_service_has_a_healthcheck(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if name != "migrate":  # a one-shot job
            assert service.get("healthcheck"), f"{name} has no healthcheck"


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)([smh])", str(text)))


def test_workers_get_the_time_a_warm_shutdown_takes(services: dict[str, dict[str, Any]]) -> None:
    # A SIGTERM'd worker finishes its running task: up to the hard time limit, then the soft
    # shutdown. Docker's SIGKILL must not come before that.
    for name in WORKERS:
        env = {k: str(v) for k, v in services[name]["environment"].items()}
        settings = load_settings(env=env, cwd=ROOT)
        needed = settings.tasks.time_limit + settings.workers.shutdown_timeout
        grace = _seconds(services[name].get("stop_grace_period", "10s"))  # Docker's default
        assert grace >= needed, (name, grace, needed)


def flower_healthcheck_code(port: int) -> str:
    """The Python the flower container's healthcheck runs, pointed at ``port``."""
    argv = health_command(
        _walk(yaml.safe_load(COMPOSE.read_text())["services"], operator_env())["flower"]
    )
    return argv[2].replace("127.0.0.1:5555", f"127.0.0.1:{port}")


def test_broker_redis_keeps_messages_and_cache_redis_is_bounded(
    services: dict[str, dict[str, Any]],
) -> None:
    broker = shlex.split(services["redis"]["command"][-1])
    assert "--appendonly" in broker and broker[broker.index("--appendonly") + 1] == "yes"
    assert broker[broker.index("--maxmemory-policy") + 1] == "noeviction"
    assert "requirepass" in services["redis"]["command"][-1]
    cache = shlex.split(services["cache"]["command"][-1])
    assert cache[cache.index("--maxmemory-policy") + 1] == "allkeys-lru"
    assert cache[cache.index("--maxmemory") + 1] == "$LEWIS_CACHE_MAX_MEMORY"
    assert (
        services["cache"]["environment"]["LEWIS_CACHE_MAX_MEMORY"]
        == services["worker-io"]["environment"]["LEWIS_CACHE_MAX_MEMORY"]
    )


def test_flower_requires_auth_and_publishes_on_loopback_only(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    flower = services["flower"]
    env = {k: v for k, v in flower["environment"].items() if k.startswith("LEWIS_")}
    stack = load_settings(env=env, cwd=tmp_path).stack
    assert stack.flower_user and stack.flower_password
    ctx = resolve_command(flower["command"])
    assert [p.split(":") for p in flower["ports"]] == [
        ["127.0.0.1", "5555", str(ctx.params["port"])]
    ]


def test_secrets_come_from_variables_not_the_file(raw: dict[str, Any]) -> None:
    envs = [raw["x-lewis-env"], *((s.get("environment") or {}) for s in raw["services"].values())]
    urls = 0
    for env in envs:
        for key, value in env.items():
            if "PASSWORD" in key:
                assert str(value).startswith("${"), f"{key} is a literal"
            m = re.match(r"^[a-z+]+://[^:/@]*:(.*)@[^@]+$", str(value))
            if m:
                urls += 1
                assert m.group(1).startswith("${"), f"{key}: the URL's password is a literal"
    assert urls >= 4  # broker, result backend, cache, database


def test_the_image_installs_the_package_with_postgres() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert 'pip install ".[postgres]"' in dockerfile
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^postgres\s*=", pyproject, re.M)
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is missing"


def test_prometheus_scrapes_the_monitor_and_both_publish_on_loopback_only(
    services: dict[str, dict[str, Any]],
) -> None:
    monitor, prometheus = services["monitor"], services["prometheus"]
    ctx = resolve_command(monitor["command"])
    port = str(ctx.params["port"])
    assert [p.split(":") for p in monitor["ports"]] == [["127.0.0.1", "9808", port]]
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])
    mount = next(v for v in prometheus["volumes"] if v.endswith(":ro"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert targets == [f"monitor:{port}"]
    assert set(prometheus["depends_on"]) == {"monitor"}
