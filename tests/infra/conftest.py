"""Fixtures of the infra tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lewis_tasks.infra.redis_server import EmbeddedRedis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own (AOF on: a restart keeps what it answered)."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True).start()
    try:
        yield server
    finally:
        server.stop()
