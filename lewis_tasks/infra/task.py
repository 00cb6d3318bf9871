"""LewisTask: the base of every task.

It adds what Celery leaves to us:

* a cap on deliveries: each start increments a Redis counter keyed by task id and retry
  number; past ``tasks.max_redeliveries`` the task fails with RedeliveryLimitExceeded instead
  of running again (``task_reject_on_worker_lost`` would otherwise requeue a task that always
  kills its worker forever);
* typed error handling: InvalidInput fails at once with its message, TransientError is
  retried with exponential backoff;
* one timed log line per finished task, and a per-task run counter for the metrics.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from celery import Task

from ..errors import RedeliveryLimitExceeded, TransientError
from .config import get_settings
from .redis_client import get_redis

log = logging.getLogger("lewis_tasks.task")

DELIVERIES_KEY = "lewis:deliveries:{task_id}:{retries}"
RUNS_KEY = "lewis:stats:runs"


class LewisTask(Task):  # type: ignore[misc]
    """Base task: redelivery cap, backoff on TransientError, one log line per run."""

    autoretry_for = (TransientError,)
    retry_backoff = True
    retry_jitter = True
    typing = True

    @property
    def retry_backoff_max(self) -> int:  # type: ignore[override]
        return get_settings().tasks.retry_backoff_max

    @property
    def max_retries(self) -> int:  # type: ignore[override]
        return get_settings().tasks.max_retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if not request.called_directly and not request.is_eager and request.id:
            self._count_delivery(request.id, request.retries or 0)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if get_settings().monitoring.performance_logging:
                log.info("task %s[%s] %s in %.3fs", self.name, request.id, outcome,
                         time.perf_counter() - started)

    def _count_delivery(self, task_id: str, retries: int) -> None:
        settings = get_settings()
        key = DELIVERIES_KEY.format(task_id=task_id, retries=retries)
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, settings.broker.visibility_timeout * 4)
            pipe.hincrby(RUNS_KEY, self.name, 1)
            count = int(pipe.execute()[0])
        except redis.RedisError as exc:  # the cap is a safety net; never fail a task for it
            log.warning("delivery count for %s unavailable: %s", task_id, exc)
            return
        cap = settings.tasks.max_redeliveries
        if count > cap + 1:
            raise RedeliveryLimitExceeded(
                f"task {self.name}[{task_id}] was delivered {count} times (cap: "
                f"tasks.max_redeliveries={cap}); it probably kills its worker, so it fails instead "
                "of running again")


def deliveries(task_id: str, retries: int = 0) -> int:
    """How many times ``task_id`` started (0 if never or expired)."""
    value = get_redis().get(DELIVERIES_KEY.format(task_id=task_id, retries=retries))
    return int(value) if value else 0
