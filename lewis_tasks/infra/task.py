"""LewisTask: the base of every task.

It adds what Celery leaves to us:

* a cap on deliveries: kombu marks every message it puts back (worker lost, visibility
  timeout) as redelivered; each such start increments a Redis counter keyed by task id and
  retry number, and past ``tasks.max_redeliveries`` the task fails with
  RedeliveryLimitExceeded instead of running again (``task_reject_on_worker_lost`` would
  otherwise requeue a task that always kills its worker forever). A first delivery costs no
  Redis round trip;
* typed error handling: InvalidInput fails at once with its message, TransientError is
  retried with exponential backoff;
* one timed log line per finished task, and for tasks with ``count_runs`` (beat jobs) a run
  counter per task name in Redis.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import redis
from celery import Task

from ..errors import InvalidInput, RedeliveryLimitExceeded, TransientError
from .config import get_settings
from .redis_client import get_redis

log = logging.getLogger("lewis_tasks.task")

DELIVERIES_KEY = "lewis:deliveries:{task_id}:{retries}"
RUNS_KEY = "lewis:stats:runs"


class LewisTask(Task):  # type: ignore[misc, unused-ignore]
    """Base task: redelivery cap, backoff on TransientError, one log line per run."""

    autoretry_for = (TransientError,)
    # A refused request (bad input, out of scope, an unregistered callable) is the caller's
    # error: Celery logs it as one INFO line ("raised expected"), no ERROR and no traceback
    throws = (InvalidInput,)
    retry_backoff = True
    retry_jitter = True
    typing = True
    count_runs = False

    @property
    def retry_backoff_max(self) -> int:  # type: ignore[override, unused-ignore]
        return get_settings().tasks.retry_backoff_max

    @property
    def max_retries(self) -> int:  # type: ignore[override, unused-ignore]
        return get_settings().tasks.max_retries

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if not request.called_directly and not request.is_eager and request.id:
            if (request.delivery_info or {}).get("redelivered"):
                self._count_redelivery(request.id, request.retries or 0)
            if self.count_runs:
                self._count_run()
        started = time.perf_counter()
        outcome = "ok"
        try:
            return super().__call__(*args, **kwargs)
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            if get_settings().monitoring.performance_logging:
                log.info(
                    "task %s[%s] %s in %.3fs",
                    self.name,
                    request.id,
                    outcome,
                    time.perf_counter() - started,
                )

    def _count_redelivery(self, task_id: str, retries: int) -> None:
        settings = get_settings()
        key = DELIVERIES_KEY.format(task_id=task_id, retries=retries)
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, settings.broker.visibility_timeout * 4)
            count = int(pipe.execute()[0])
        except redis.RedisError as exc:  # the cap is a safety net; never fail a task for it
            log.warning("redelivery count for %s unavailable: %s", task_id, exc)
            return
        cap = settings.tasks.max_redeliveries
        if count > cap:
            raise RedeliveryLimitExceeded(
                f"task {self.name}[{task_id}] was delivered {count + 1} times (cap: "
                f"tasks.max_redeliveries={cap}); it probably kills its worker, so it fails instead "
                "of running again"
            )

    def _count_run(self) -> None:
        try:
            get_redis().hincrby(RUNS_KEY, self.name, 1)
        except redis.RedisError as exc:
            log.warning("run count of %s unavailable: %s", self.name, exc)


def redeliveries(task_id: str, retries: int = 0) -> int:
    """How many times ``task_id`` was delivered again after its first delivery."""
    value = get_redis().get(DELIVERIES_KEY.format(task_id=task_id, retries=retries))
    return int(value) if value else 0


def stored_failure(app: Any, task_id: str, patience: float = 5.0) -> BaseException | None:
    """The exception ``task_id`` failed with, or None.

    For errbacks: Celery calls them just before it stores the failure, so this gives the
    store up to ``patience`` seconds.
    """
    from celery.result import AsyncResult

    result = AsyncResult(task_id, app=app)
    give_up = time.monotonic() + patience
    while result.state != "FAILURE" and time.monotonic() < give_up:
        time.sleep(0.05)
    failure = result.result
    return failure if isinstance(failure, BaseException) else None


_DEPENDENCY = re.compile(r"Dependency (\S+) raised")


def chord_cause(app: Any, exc: BaseException) -> BaseException:
    """The part's own error behind a ChordError ("Dependency <id> raised …"), when its
    result is still stored; else ``exc`` itself."""
    from celery.exceptions import ChordError
    from celery.result import AsyncResult

    found = _DEPENDENCY.search(str(exc)) if isinstance(exc, ChordError) else None
    if found is not None:
        try:
            cause = AsyncResult(found.group(1), app=app).result
        except Exception:  # a backend hiccup: the ChordError still says what happened
            return exc
        if isinstance(cause, BaseException):
            return cause
    return exc
