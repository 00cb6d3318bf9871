"""Celery task messages written straight to the Redis broker: the producers' fast path.

Celery protocol-2 messages, byte-for-byte what kombu's Redis transport writes (any Celery
worker consumes them), pushed with ONE Redis command: ``send_task`` spends three round trips
and ~1 ms of Python per task (binding lookup, publish, result subscription in series). Here a
message is built with the app's own ``as_task_v2`` and a batch of them goes in one pipelined
LPUSH per 500. Transport code, beside the transport (:mod:`lewis_tasks.infra.transport`).
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from celery import Celery
from kombu.utils.json import dumps as json_dumps

from ..errors import BrokerUnavailable
from .broker import PRIORITY_SEP
from .config import redact_url
from .reporter import SENT_HEADER
from .runtime import runtime

LPUSH_SIZE = 500  # messages per LPUSH


def queue_key(queue: str, priority: int) -> str:
    """The Redis list a message of ``priority`` waits in: kombu keeps priorities in 4
    sub-lists (0, 3, 6, 9), each holding the values from its step up; mirrored here so workers
    see the same order."""
    step = max(s for s in (0, 3, 6, 9) if s <= max(0, priority))
    return queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"


def message_origin() -> str:
    """This process as a message's ``origin`` header."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def task_message(
    app: Celery,
    name: str,
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    queue: str,
    origin: str,
    priority: int,
) -> str:
    """The message kombu's Redis transport would LPUSH for this call, as JSON text."""
    msg = app.amqp.as_task_v2(
        task_id, name, list(args), dict(kwargs), origin=origin, argsrepr=None, kwargsrepr=None
    )
    msg.headers[SENT_HEADER] = time.time()  # the worker times the queue wait from it
    body = json_dumps(msg.body).encode()
    properties = dict(msg.properties)
    properties.update(
        delivery_mode=2,
        priority=priority,
        body_encoding="base64",
        delivery_info={"exchange": "", "routing_key": queue},
        delivery_tag=str(uuid.uuid4()),
    )
    return json_dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": msg.headers,
            "properties": properties,
        }
    )


def push_messages(app: Celery, key: str, messages: list[str], attempts: int = 3) -> None:
    """LPUSH ``messages`` onto ``key`` of the app's broker, pipelined; a connect failure (surely
    unsent) is retried, anything else is BrokerUnavailable: at-least-once, never silently twice."""
    client = runtime().redis(app.conf.broker_url)
    for attempt in range(attempts):
        try:
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(messages), LPUSH_SIZE):
                pipe.lpush(key, *messages[start : start + LPUSH_SIZE])
            pipe.execute()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # A pipeline without MULTI can half-apply; only a connect failure is surely unsent,
            # so only then retry.
            if attempt == attempts - 1 or not _never_sent(exc):
                raise BrokerUnavailable(
                    f"broker {redact_url(str(app.conf.broker_url))} did not take the task(s): {exc}"
                ) from exc
            time.sleep(0.2 * 2**attempt)


def _never_sent(exc: Exception) -> bool:
    text = str(exc).lower()
    return "connect" in text and ("refused" in text or "error" in text) and "reading" not in text


__all__ = ["LPUSH_SIZE", "queue_key", "message_origin", "task_message", "push_messages"]
