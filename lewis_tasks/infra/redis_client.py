"""One Redis client per URL per process, kept in the process's runtime (which a forked child
rebuilds: a socket shared across a fork corrupts both sides' replies)."""

from __future__ import annotations

import redis

from .runtime import runtime


def get_redis(url: str | None = None, *, timeout: float | None = None) -> redis.Redis:
    """A pooled client for ``url`` (default: the broker's Redis), private to this process."""
    return runtime().redis(url, timeout=timeout)


def reset_clients() -> None:
    """Forget every client (after settings change in tests): the next use connects anew."""
    runtime().forget_redis()
