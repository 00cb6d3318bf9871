"""Tasks for the fleet tests, loaded into real io workers with ``-I``: each says which worker
ran it (a list in the worker's Redis db), the way the fair-share and drain tests count."""

from __future__ import annotations

import time
from typing import Any

from lewis_tasks.infra.celery_app import app
from lewis_tasks.infra.redis_client import get_redis


@app.task(name="lewis.testing.who", bind=True)
def who(self: Any, job: str, index: int, seconds: float) -> str:
    """Work ``seconds`` (a chunk's share of a long job), then record ``index`` under the
    worker's node name in ``test:who:<job>`` (and ``test:started:<job>`` on start)."""
    client = get_redis()
    client.rpush(f"test:started:{job}", f"{index}")
    time.sleep(seconds)
    client.rpush(f"test:who:{job}", f"{self.request.hostname} {index}")
    return str(self.request.hostname)
