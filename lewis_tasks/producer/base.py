"""Submitting work: handles, single submits and a pipelined batch submit.

``submit`` is ``send_task`` with the routing table applied. ``submit_many`` builds the same
Celery protocol-2 messages and pushes them to Redis in pipelined batches: one ``apply_async``
per task costs a round trip each (~2k/s from one producer); a pipeline sends thousands per
round trip. The messages are byte-for-byte what kombu's Redis transport would write, so any
Celery worker consumes them.
"""

from __future__ import annotations

import base64
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kombu.utils.json import dumps as json_dumps

from celery import Celery
from celery.result import AsyncResult

from ..errors import InvalidInput, LewisError
from ..infra.routing import queue_for

PRIORITY_SEP = "\x06\x16"


@dataclass
class TaskHandle:
    """A submitted task: poll its state, wait for its result."""

    id: str
    name: str
    app: Celery

    @property
    def async_result(self) -> AsyncResult:
        return AsyncResult(self.id, app=self.app)

    @property
    def state(self) -> str:
        return str(self.async_result.state)

    def ready(self) -> bool:
        return bool(self.async_result.ready())

    def wait(self, timeout: float | None = None, interval: float = 0.1) -> Any:
        """The task's return value; re-raises its failure (a LewisError subclass where it was one)."""
        return self.async_result.get(timeout=timeout, interval=interval, propagate=True)

    def forget(self) -> None:
        self.async_result.forget()


def _app(app: Celery | None) -> Celery:
    if app is not None:
        return app
    from ..infra.celery_app import app as default_app

    return default_app


def _require_broker(app: Celery) -> None:
    if not app.conf.broker_url:
        raise LewisError("no broker: set LEWIS_BROKER_URL, or start the embedded stack with "
                         "`lewis up` (other commands then find it by themselves)")


def submit(name: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, *,
           app: Celery | None = None, **options: Any) -> TaskHandle:
    """Send task ``name`` to its queue (from the routing table) and return its handle."""
    app = _app(app)
    _require_broker(app)
    options.setdefault("queue", queue_for(name))
    result = app.send_task(name, args=list(args), kwargs=dict(kwargs or {}), **options)
    return TaskHandle(result.id, name, app)


def submit_many(name: str, calls: Iterable[tuple[Sequence[Any], Mapping[str, Any]]], *,
                app: Celery | None = None, queue: str | None = None, batch: int = 1000,
                priority: int = 0) -> list[TaskHandle]:
    """Enqueue one task per ``(args, kwargs)`` in ``calls``, pipelined ``batch`` at a time."""
    app = _app(app)
    _require_broker(app)
    queue = queue or queue_for(name)
    if batch < 1:
        raise InvalidInput(f"batch must be ≥ 1, got {batch}")
    key = queue if not priority else f"{queue}{PRIORITY_SEP}{_priority_step(priority)}"
    origin = f"gen{os.getpid()}@{socket.gethostname()}"
    handles: list[TaskHandle] = []
    pending: list[str] = []
    with app.connection_for_write() as conn:
        client = conn.default_channel.client
        for args, kwargs in calls:
            task_id = str(uuid.uuid4())
            pending.append(_message(app, name, task_id, args, kwargs, queue, origin, priority))
            handles.append(TaskHandle(task_id, name, app))
            if len(pending) >= batch:
                _push(client, key, pending)
                pending = []
        if pending:
            _push(client, key, pending)
    return handles


def _priority_step(priority: int) -> int:
    # kombu keeps priorities in 4 sub-lists (0, 3, 6, 9), each holding the values from its step
    # up; mirror that so workers see the same order.
    return max(s for s in (0, 3, 6, 9) if s <= max(0, priority))


def _push(client: Any, key: str, messages: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(messages), 500):  # LPUSH with many values: one command per 500
        pipe.lpush(key, *messages[start:start + 500])
    pipe.execute()


def _message(app: Celery, name: str, task_id: str, args: Sequence[Any],
             kwargs: Mapping[str, Any], queue: str, origin: str, priority: int) -> str:
    msg = app.amqp.as_task_v2(task_id, name, list(args), dict(kwargs), origin=origin,
                              argsrepr=None, kwargsrepr=None)
    body = json_dumps(msg.body).encode()
    properties = dict(msg.properties)
    properties.update(
        delivery_mode=2, priority=priority, body_encoding="base64",
        delivery_info={"exchange": "", "routing_key": queue},
        delivery_tag=str(uuid.uuid4()),
    )
    return json_dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": msg.headers,
        "properties": properties,
    })


def wait_all(handles: Sequence[TaskHandle], timeout: float | None = None) -> list[Any]:
    """Every handle's result, in order; raises the first failure."""
    deadline = None if timeout is None else time.monotonic() + timeout
    out = []
    for handle in handles:
        left = None if deadline is None else max(0.01, deadline - time.monotonic())
        out.append(handle.wait(left))
    return out
