"""A task's result read straight from the Redis result backend, by push, without Celery.

Celery's Redis backend stores a task's state under ``celery-task-meta-<id>`` and PUBLISHes it
on a channel of the same name (:mod:`lewis_tasks.infra.result_backend`). :class:`ResultWaiter`
subscribes to that channel, then reads the key (so a result stored before the subscription
is seen too), and waits for the push; the key is read again at least every ``interval``
seconds, so a lost push costs that much at most. The stored JSON is decoded as kombu writes
it (its ``{"__type__": …}`` markers for datetimes and the like). Waiting this way needs no
Celery app: the CLI's one-task jobs (``lewis scan HOST -p 80``, ``lewis http URL``) start
without building or importing one. A failure is returned as the stored meta; turning it
back into the task's exception is Celery's work (:mod:`lewis_tasks.producer.handle`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import time
import uuid
from typing import Any

import redis

from .runtime import runtime

RESULT_KEY = "celery-task-meta-{task_id}"
# A chord's size, as Celery's Redis backend keeps it (``set_chord_size``): the header parts'
# on_chord_part_return compare their count with it to send the body.
CHORD_SIZE_KEY = "celery-taskset-meta-{group_id}.s"
READY = frozenset({"SUCCESS", "FAILURE", "REVOKED"})  # Celery's READY_STATES

_DECODERS: dict[str, Any] = {
    "datetime": dt.datetime.fromisoformat,
    "date": lambda v: dt.datetime.fromisoformat(v).date(),
    "time": dt.time.fromisoformat,
    "decimal": decimal.Decimal,
    "uuid": lambda v: uuid.UUID(**v),
}


def _revive(obj: dict[str, Any]) -> Any:
    if obj.keys() == {"__type__", "__value__"}:
        decode = _DECODERS.get(obj["__type__"])
        if decode is not None:
            return decode(obj["__value__"])
    return obj


def decode_meta(raw: bytes | str | None) -> dict[str, Any] | None:
    """A stored result (``status``, ``result``, ``traceback``…) as kombu's JSON reads it."""
    if raw is None:
        return None
    meta = json.loads(raw, object_hook=_revive)
    return meta if isinstance(meta, dict) else None


def set_chord_size(url: str, group_id: str, size: int, expires: int) -> None:
    """Store chord ``group_id``'s header size in the result store at ``url`` (kept ``expires``
    seconds, Celery's ``chord_expires``), as Celery's chord does before sending its parts."""
    runtime().redis(url).set(CHORD_SIZE_KEY.format(group_id=group_id), size, ex=expires or None)


class ResultWaiter:
    """Wait for task ``task_id``'s result in the Redis result store at ``url``."""

    def __init__(self, url: str, task_id: str) -> None:
        self._client = runtime().redis(url)
        self._key = RESULT_KEY.format(task_id=task_id)
        self._pubsub: Any = None

    def stored(self) -> dict[str, Any] | None:
        """The result's meta if the task has ended (succeeded, failed, revoked), else None."""
        meta = decode_meta(self._client.get(self._key))
        return meta if meta is not None and meta.get("status") in READY else None

    def wait(self, timeout: float | None, interval: float = 1.0) -> dict[str, Any] | None:
        """The meta once the task has ended; None if it has not after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._pubsub is None:  # subscribed before the read: no store falls between
                self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                self._pubsub.subscribe(self._key)
            meta = self.stored()
            if meta is not None:
                return meta
            left = interval if deadline is None else min(interval, deadline - time.monotonic())
            if left <= 0:
                return None
            pushed = self._listen(left)
            if pushed is not None:
                return pushed

    def _listen(self, seconds: float) -> dict[str, Any] | None:
        """The pushed meta of an ended task within ``seconds``; None: nothing (read again)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                message = self._pubsub.get_message(timeout=left)
            except (redis.ConnectionError, redis.TimeoutError):
                self.close()  # subscribed anew, and the key read again, on the next round
                return None
            if message is not None and message.get("type") == "message":
                meta = decode_meta(message.get("data"))
                if meta is not None and meta.get("status") in READY:
                    return meta
        return None

    def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):  # best effort
                pubsub.close()


__all__ = ["RESULT_KEY", "CHORD_SIZE_KEY", "READY", "ResultWaiter", "decode_meta", "set_chord_size"]
