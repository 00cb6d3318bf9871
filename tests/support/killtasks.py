"""Tasks for the kill tests, loaded into real worker subprocesses with ``-I``.

They record into Redis (the worker's db): starts per key, and an idempotent result keyed by
the work key — the way real tasks persist by scan id.
"""

from __future__ import annotations

import os
import signal
import time

from lewis_tasks.infra.celery_app import app
from lewis_tasks.infra.redis_client import get_redis


@app.task(name="lewis.testing.record")
def record(key: str, seconds: float) -> str:
    """Count a start, work ``seconds``, then record the result once (HSETNX: a rerun changes nothing)."""
    client = get_redis()
    client.incr(f"test:starts:{key}")
    client.set(f"test:running:{key}", os.getpid())
    time.sleep(seconds)
    client.hsetnx("test:records", key, f"done by {os.getpid()}")
    client.incr(f"test:completions:{key}")
    return key


@app.task(name="lewis.testing.suicide")
def suicide(key: str) -> None:
    """Kill the process that runs it, every time (like a task that always runs out of memory)."""
    get_redis().incr(f"test:starts:{key}")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="lewis.testing.nap")
def nap(key: str, seconds: float) -> str:
    """Sleep ``seconds`` and return ``key``; touches no Redis (only its result is stored)."""
    time.sleep(seconds)
    return key
