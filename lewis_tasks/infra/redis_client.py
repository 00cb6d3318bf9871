"""One Redis client per URL per process, rebuilt after a fork (a socket shared across a fork
corrupts both sides' replies)."""

from __future__ import annotations

import os
import threading

import redis

from .config import get_settings

_clients: dict[str, tuple[int, redis.Redis]] = {}
_lock = threading.Lock()


def get_redis(url: str | None = None, *, timeout: float | None = None) -> redis.Redis:
    """A pooled client for ``url`` (default: the broker's Redis), private to this process."""
    settings = get_settings()
    url = url or settings.broker.url
    pid = os.getpid()
    with _lock:
        entry = _clients.get(url)
        if entry is None or entry[0] != pid:
            timeout = timeout or settings.broker.connect_timeout
            client = redis.Redis.from_url(
                url, socket_timeout=max(timeout, 5.0), socket_connect_timeout=timeout,
                max_connections=settings.broker.max_connections, health_check_interval=25)
            _clients[url] = (pid, client)
            entry = _clients[url]
        return entry[1]


def reset_clients() -> None:
    """Forget every client (after settings change in tests, or in a fresh child)."""
    with _lock:
        _clients.clear()
