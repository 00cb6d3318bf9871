"""The worker's side of the fleet: its presence record, and ``lewis drain``'s control command.

The record is written from the consumer's own event loop (a consumer bootstep on its timer):
a worker whose loop hangs stops writing and drops out of ``lewis health`` within a few
periods, though its process still runs.

Drain (``lewis_drain``, a remote-control command): the worker stops consuming the named
queues (Celery's ``cancel_task_queue``, what ``cancel_consumer`` does); once it consumes
nothing it says so in its record, waits until every task it accepted has finished, and then
sends itself SIGTERM — Celery's warm shutdown, exit 0. Nothing it had not accepted leaves the
queue, and nothing running is cut short: the same mechanism a scale-down uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker.control import control_command

from ..domain.fleet import DRAINING, UP, WorkerRecord
from .config import get_settings
from .fleet import database_fingerprint, forget_worker, presence_period, write_worker
from .runtime import runtime

log = logging.getLogger(__name__)

IDLE_POLL = 0.2  # seconds between checks that a draining worker's tasks have finished


def _client() -> redis.Redis:
    """A client of its own with short timeouts: a write never holds the event loop long."""
    presence = runtime().presence
    if presence.client is None:
        presence.client = redis.Redis.from_url(
            get_settings().broker.url, socket_timeout=1.0, socket_connect_timeout=1.0
        )
    return presence.client


def _record(consumer: Any) -> WorkerRecord:
    presence = runtime().presence
    consuming = tuple(sorted(consumer.app.amqp.queues.consume_from or ()))
    if not presence.queues:
        presence.queues = consuming
    queues = presence.queues if presence.draining else consuming
    return WorkerRecord(
        name=consumer.hostname,
        queues=tuple(queues),
        state=DRAINING if presence.draining else UP,
        pid=os.getpid(),
        concurrency=int(getattr(consumer.controller, "concurrency", 0) or 0),
        visibility_timeout=get_settings().broker.visibility_timeout,
        database=database_fingerprint(get_settings().database.url),
    )


def publish(consumer: Any) -> None:
    """Write this worker's record now; a broker outage only skips one write."""
    period = presence_period(get_settings().monitoring.health_check_interval)
    try:
        write_worker(_client(), _record(consumer), period)
    except (redis.RedisError, OSError) as exc:
        log.debug("presence not written: %s", exc)


class Presence(bootsteps.StartStopStep):  # type: ignore[misc, unused-ignore]
    """Consumer step: the presence record every period while the consumer runs."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.tref: Any = None
        super().__init__(parent, **kwargs)

    def start(self, c: Any) -> None:
        publish(c)
        period = presence_period(get_settings().monitoring.health_check_interval)
        self.tref = c.timer.call_repeatedly(period, publish, (c,), priority=10)

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        with contextlib.suppress(redis.RedisError, OSError):  # else it expires by itself
            forget_worker(_client(), c.hostname)


def _exit_when_idle() -> None:
    from celery.worker import state as worker_state

    time.sleep(2 * IDLE_POLL)  # the cancel runs on the event loop: let it land first
    while worker_state.active_requests or worker_state.reserved_requests:
        time.sleep(IDLE_POLL)
    log.info("drained: every accepted task finished; warm shutdown")
    os.kill(os.getpid(), signal.SIGTERM)


@control_command(args=[("queues", str)], signature="[queue,…]")  # type: ignore[misc, unused-ignore]
def lewis_drain(state: Any, queues: list[str] | str | None = None, **_: Any) -> dict[str, Any]:
    """Stop consuming ``queues`` (all when none); with nothing left, finish and exit warm."""
    consumer = state.consumer
    if isinstance(queues, str):
        queues = [q for q in queues.split(",") if q]
    presence = runtime().presence
    current = set(consumer.app.amqp.queues.consume_from or ())
    if not presence.queues:
        presence.queues = tuple(sorted(current))
    targets = current if not queues else current & set(queues)
    for queue in sorted(targets):
        consumer.call_soon(consumer.cancel_task_queue, queue)
    left = sorted(current - targets)
    exiting = not left
    if exiting and not presence.draining:
        presence.draining = True
        threading.Thread(target=_exit_when_idle, name="lewis-drain", daemon=True).start()
    publish(consumer)
    return {
        "ok": f"draining {', '.join(sorted(targets)) or 'nothing'}",
        "exiting": exiting,
        "consuming": left,
    }


__all__ = ["Presence", "publish", "lewis_drain"]
