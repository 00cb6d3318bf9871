"""Stopping a job: a cancel flag in Redis per job, and the revocation of its queued tasks.

``request_cancel`` sets ``lewis:cancel:{job}`` (with a TTL: a flag outlives the job's tasks,
never the broker's memory) and revokes the job's chunk tasks by id, so a queued chunk is
dropped by the worker that takes it. A running chunk reads the flag through
:class:`CancelCheck`, a callable its loop calls as often as it likes: Redis is asked at most
every ``interval`` seconds, and an unreachable Redis reads as "not cancelled" (a hiccup must
not stop work nobody cancelled).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import redis
from celery import Celery

log = logging.getLogger(__name__)

CANCEL_KEY = "lewis:cancel:{job}"
CHECK_INTERVAL = 0.15  # seconds: the longest a running chunk runs on after the flag is set


def cancel_key(job_id: str) -> str:
    return CANCEL_KEY.format(job=job_id)


def request_cancel(
    client: redis.Redis, app: Celery, job_id: str, task_ids: Sequence[str], ttl: int
) -> bool:
    """Set the job's flag and revoke ``task_ids``; False if it was cancelled already."""
    first = bool(client.set(cancel_key(job_id), "1", ex=max(1, ttl), nx=True))
    if task_ids:
        app.control.revoke(list(task_ids))
    return first


def is_cancelled(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(cancel_key(job_id)))


class CancelCheck:
    """``check()`` is True once the job's flag is set; Redis is read at most every ``interval``."""

    def __init__(self, client: redis.Redis, job_id: str, interval: float = CHECK_INTERVAL) -> None:
        self._client, self._key, self._interval = client, cancel_key(job_id), interval
        self._next = 0.0
        self._cancelled = False

    def __call__(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        try:
            self._cancelled = bool(self._client.exists(self._key))
        except redis.RedisError as exc:
            log.debug("cancel flag %s unread: %s", self._key, exc)
        return self._cancelled


__all__ = [
    "CANCEL_KEY",
    "CHECK_INTERVAL",
    "CancelCheck",
    "cancel_key",
    "is_cancelled",
    "request_cancel",
]
