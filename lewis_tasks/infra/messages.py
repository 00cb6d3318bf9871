"""Celery task messages written straight to the Redis broker: the producers' fast path.

Celery protocol-2 messages, what kombu's Redis transport writes for ``as_task_v2`` (any
Celery worker consumes them; ``tests/infra/test_messages.py`` holds them to Celery's own),
pushed with ONE Redis command: ``send_task`` spends three round trips and ~1 ms of Python per
task (binding lookup, publish, result subscription in series). Here a message is written by
hand — no Celery app is built or even imported, which is what lets ``lewis scan`` and
``lewis http`` start in a fraction of the time — and a batch of them goes in one pipelined
LPUSH per 500. Transport code, beside the transport (:mod:`lewis_tasks.infra.transport`).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis

from ..errors import BrokerUnavailable
from .config import redact_url
from .routing import PRIORITY_SEP, PRIORITY_STEPS
from .runtime import runtime

LPUSH_SIZE = 500  # messages per LPUSH
SENT_HEADER = "lewis_sent_at"  # when the producer sent it: the worker times the queue wait
REPR_SIZE = 1024  # characters of argsrepr/kwargsrepr (Celery's argsrepr_maxsize)


def queue_key(queue: str, priority: int) -> str:
    """The Redis list a message of ``priority`` waits in: kombu keeps priorities in 4
    sub-lists (0, 3, 6, 9), each holding the values from its step up; mirrored here so workers
    see the same order."""
    step = max(s for s in PRIORITY_STEPS if s <= max(0, priority))
    return queue if step == 0 else f"{queue}{PRIORITY_SEP}{step}"


def message_origin() -> str:
    """This process as a message's ``origin`` header."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


def signature(
    name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A task signature as Celery serialises it (a callback or errback inside a message)."""
    return {
        "task": name,
        "args": list(args),
        "kwargs": dict(kwargs or {}),
        "options": {},
        "subtask_type": None,
        "immutable": False,
    }


def chord_callback(
    name: str,
    kwargs: Mapping[str, Any],
    *,
    task_id: str,
    group_id: str,
    errbacks: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The chord's body as Celery freezes it into every header message (its id, the group it
    waits on, ``errbacks`` as ``link_error`` adds them)."""
    options: dict[str, Any] = {"group_id": group_id, "task_id": task_id}
    if errbacks:
        options["link_error"] = [dict(e) for e in errbacks]
    return {**signature(name, (), kwargs), "options": options}


def task_message(
    name: str,
    task_id: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    queue: str,
    origin: str,
    priority: int,
    *,
    errbacks: Sequence[Mapping[str, Any]] = (),
    chord: tuple[Mapping[str, Any], int] | None = None,
) -> str:
    """The message kombu's Redis transport would LPUSH for this call (Celery's ``as_task_v2``
    headers and body, ``errbacks`` as ``link_error`` adds them), as JSON text. ``chord``:
    (its :func:`chord_callback`, this message's index in the header) for a part of a chord,
    whose size :func:`lewis_tasks.infra.results.set_chord_size` stores."""
    args, kwargs = list(args), dict(kwargs)
    callback, index = chord if chord is not None else (None, None)
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": callback["options"]["group_id"] if callback is not None else None,
        "group_index": index,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": _short_repr(args),
        "kwargsrepr": _short_repr(kwargs),
        "origin": origin,
        "ignore_result": None if callback is not None else False,  # as Celery's chord sends
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
        SENT_HEADER: time.time(),  # the worker times the queue wait from it
    }
    embed = {
        "callbacks": None,
        "errbacks": [dict(e) for e in errbacks] or None,
        "chain": None,
        "chord": dict(callback) if callback is not None else None,
    }
    body = json.dumps([args, kwargs, embed]).encode()
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "priority": priority,
                "body_encoding": "base64",
                "delivery_info": {"exchange": "", "routing_key": queue},
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def _short_repr(value: Any) -> str:
    """What Flower and ``celery inspect`` show of the arguments: their repr, cut to size."""
    text = repr(value)
    return text if len(text) <= REPR_SIZE else text[: REPR_SIZE - 3] + "..."


def push_messages(broker_url: str, key: str, messages: list[str], attempts: int = 3) -> None:
    """LPUSH ``messages`` onto ``key`` of the broker at ``broker_url``, pipelined; a connect
    failure (surely unsent) is retried, anything else is BrokerUnavailable: at-least-once,
    never silently twice."""
    client = runtime().redis(broker_url)

    def send() -> None:
        pipe = client.pipeline(transaction=False)
        for start in range(0, len(messages), LPUSH_SIZE):
            pipe.lpush(key, *messages[start : start + LPUSH_SIZE])
        pipe.execute()

    sending(broker_url, send, attempts)


def sending(broker_url: str, send: Callable[[], None], attempts: int = 3) -> None:
    """Run ``send`` (a write to the broker at ``broker_url``), again after a connect failure
    (surely unsent); any other connection error is BrokerUnavailable."""
    for attempt in range(attempts):
        try:
            send()
            return
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # A pipeline without MULTI can half-apply; only a connect failure is surely unsent,
            # so only then retry.
            if attempt == attempts - 1 or not _never_sent(exc):
                raise BrokerUnavailable(
                    f"broker {redact_url(broker_url)} did not take the task(s): {exc}"
                ) from exc
            time.sleep(0.2 * 2**attempt)


def _never_sent(exc: Exception) -> bool:
    text = str(exc).lower()
    return "connect" in text and ("refused" in text or "error" in text) and "reading" not in text


__all__ = [
    "LPUSH_SIZE",
    "queue_key",
    "message_origin",
    "signature",
    "chord_callback",
    "task_message",
    "push_messages",
    "sending",
]
