"""The Celery app: every option set in one place, each with its reason.

Workers start it with ``celery -A lewis_tasks.infra.celery_app worker`` (see ``workers/``);
producers import :data:`app` or call :func:`get_app`. The app is built from the settings on
first use, not as a side effect of importing this module: ``from …celery_app import app``
(and Celery's ``-A``, which reads ``app``) builds it then, while a process that only needs a
helper here (``release_result_subscriptions``, ``celery_config``) builds none.
"""

from __future__ import annotations

import threading
from functools import cache
from typing import Any

from celery import Celery
from kombu import Queue
from kombu import pools as kombu_pools

from .config import Settings, get_settings
from .result_backend import backend_url
from .routing import CPU, QUEUES, celery_routes

TASK_MODULES = [
    "lewis_tasks.tasks.control",
    "lewis_tasks.tasks.scan",
    "lewis_tasks.tasks.http",
    "lewis_tasks.tasks.profile",
    "lewis_tasks.tasks.bench",
    "lewis_tasks.tasks.iobatch",
]


# transport options only our worker transport reads (infra/transport.py)
WORKER_ONLY = ("atomic_take", "take_batch", "settle_with_result")


def celery_config(settings: Settings) -> dict[str, object]:
    """The Celery options LEWIS uses, derived from ``settings``; nothing else is changed."""
    transport = {
        # Redis has no acks: an unacked message comes back after this; it must outlive every task.
        "visibility_timeout": settings.broker.visibility_timeout,
        # Sweep for abandoned (dead worker) messages every tenth of it; kombu's default
        # (10 s × throttle 10) would leave a killed worker's task parked for minutes.
        "unacked_restore_interval": max(1, min(10, settings.broker.visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": settings.broker.connect_timeout,
        "socket_keepalive": True,
        "retry_on_timeout": True,
        "health_check_interval": 25,
        "max_connections": settings.broker.max_connections,
        # read by our worker transport only
        "atomic_take": settings.broker.atomic_take,
        "take_batch": settings.broker.take_batch,
        "settle_with_result": settings.broker.settle_with_result,
    }
    return {
        "broker_url": settings.broker.url or None,
        # Celery's Redis backend with a one-round-trip result store (result_backend.py).
        "result_backend": backend_url(settings.result_backend) if settings.result_backend else None,
        # JSON only, on the wire and in results: no pickle anywhere.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # At-least-once: ack after the task ran; a dead child's message is requeued
        # (LewisTask caps how often, so a task that always kills its worker ends as failed).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_prefetch_multiplier": 1,  # long tasks: no worker hoards messages (io overrides)
        "task_soft_time_limit": settings.tasks.soft_time_limit,
        "task_time_limit": settings.tasks.time_limit,
        # No STARTED state: it costs every task one more backend write and publish; progress
        # of long jobs is kept by the jobs themselves (scan/batch progress rows).
        "task_track_started": False,
        "result_expires": settings.broker.result_expires,
        # Not extended: arguments (HTTP headers and bodies, say) stay out of stored results.
        "result_extended": False,
        "broker_transport_options": transport,
        "result_backend_transport_options": {
            k: v for k, v in transport.items() if k not in ("visibility_timeout", *WORKER_ONLY)
        },
        # redis-py caps a pool at 100 by default; size both pools explicitly.
        "broker_pool_limit": settings.broker.pool_limit,
        "redis_max_connections": settings.broker.max_connections,
        "redis_socket_connect_timeout": settings.broker.connect_timeout,
        "redis_socket_timeout": 30,
        "redis_retry_on_timeout": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker.connect_timeout,
        # Queues and routing: one table (routing.py); unknown names go to cpu.
        "task_queues": [Queue(name, routing_key=name) for name in QUEUES],
        "task_default_queue": CPU,
        "task_default_routing_key": CPU,
        "task_create_missing_queues": False,
        "task_routes": celery_routes(),
        # Drains: in-flight tasks get this long to finish on a warm shutdown.
        "worker_soft_shutdown_timeout": settings.workers.shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": False,
        # Beat: our leader-elected scheduler (infra/beat.py) over the jobs beat_schedule.py
        # hands in (its entry sets beat_schedule).
        "beat_scheduler": "lewis_tasks.infra.beat:LeaderScheduler",
        "beat_max_loop_interval": max(1.0, settings.stack.beat_lock_timeout / 3),
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "timezone": "UTC",
        "enable_utc": True,
    }


def _drop_pool(pool: Any) -> None:
    """Close ``pool`` and take it out of kombu's process-wide registry, where ``app.pool``
    looks pools up by broker URL: a closed pool left there is handed to the next app (or this
    one, pointed back) on that URL, and every publish fails with 'Acquire on closed pool'."""
    pool.force_close_all()
    for group in (kombu_pools.connections, kombu_pools.producers):
        for key, value in list(group.items()):
            if value is pool or getattr(value, "connections", None) is pool:
                dict.__delitem__(group, key)  # keys are stored hashed (EqualityDict)


def _rebind_task_defaults(celery_app: Celery, config: dict[str, object]) -> None:
    """Celery copies ``task_time_limit`` and its kin onto each task class when the app is
    finalized; settings swapped later would leave the tasks on the old values (a worker then
    checks and enforces limits nobody configured). A task still holding the old setting's
    value gets the new one; a task's own value stays."""
    if not celery_app.finalized:
        return
    for task in celery_app.tasks.values():
        for attr, key in type(task).from_config:
            if key in config and getattr(task, attr, None) == celery_app.conf.get(key):
                setattr(type(task), attr, config[key])


def configure_app(celery_app: Celery, settings: Settings) -> Celery:
    """Apply ``settings`` to ``celery_app`` (again, when tests swap settings); drops old pools."""
    config = celery_config(settings)
    _rebind_task_defaults(celery_app, config)
    celery_app.conf.update(config)
    if celery_app._pool is not None:  # connections to the previous broker
        _drop_pool(celery_app._pool)
        celery_app._pool = None
        # the producer pool (publishing, broadcasts) was drawn from it: drawn anew when needed
        celery_app.amqp._producer_pool = None
        if "control" in celery_app.__dict__:  # the mailbox keeps the producer pool it first saw
            celery_app.control.mailbox.__dict__.pop("producer_pool", None)
    celery_app._backend_cache = None  # the previous result backend
    celery_app._local.__dict__.pop("backend", None)
    return celery_app


# A worker stores a result until Redis is back, however long it is away: Celery's default
# gives up after 20 retries one second apart and, once Redis returns, records the task as
# failed with a ConnectionError although it ran (issue 12, item 7). Producers keep the
# default: a command must fail on a broker outage, not wait for it.
WORKER_RESULT_RETRY = {
    "max_retries": None,
    "interval_start": 0,
    "interval_step": 1,
    "interval_max": 2,
}
WORKER_TRANSPORT = "lewis_tasks.infra.transport:Transport"


def configure_worker(celery_app: Celery, settings: Settings) -> None:
    """The options only a worker process gets (called at worker_init, before anything runs)."""
    if settings.broker.url.startswith("redis://"):
        # kombu's Redis transport minus a client object per operation, surviving a broker
        # outage with a task in flight (transport.py). Flower and producers keep the stock one.
        celery_app.conf.broker_transport = WORKER_TRANSPORT
    options = dict(celery_app.conf.result_backend_transport_options or {})
    celery_app.conf.result_backend_transport_options = {
        **options,
        "retry_policy": WORKER_RESULT_RETRY,
    }
    celery_app._backend_cache = None  # a backend built before this would keep the old policy
    celery_app._local.__dict__.pop("backend", None)


def release_result_subscriptions() -> None:
    """Unsubscribe every result consumer of this process and detach its pubsub connection.

    A producer that waited on results stays subscribed to their channels; without this, the
    garbage collection of those results at interpreter exit tries to UNSUBSCRIBE on a
    half-torn-down (or, in tests, already stopped) Redis and prints tracebacks or retries.
    """
    from celery._state import _get_active_apps

    # the consumers of every app's result backends (this thread's and the cached ones): a
    # scan of the garbage collector's objects found the same, at ~50 ms per command
    backends = [
        b
        for a in _get_active_apps()
        for b in (a._local.__dict__.get("backend"), a._backend_cache)
        if b is not None
    ]
    consumers = {
        id(c): c
        for c in (getattr(b, "result_consumer", None) for b in backends)
        if c is not None and hasattr(c, "subscribed_to")
    }
    for consumer in consumers.values():
        try:
            for key in list(consumer.subscribed_to):
                consumer.cancel_for(key.decode().removeprefix("celery-task-meta-"))
            if consumer._pubsub is not None:
                consumer._pubsub.close()
        except Exception:  # best effort on the way out
            pass
        consumer._pubsub = None


def create_app(settings: Settings | None = None) -> Celery:
    """The configured Celery app."""
    celery_app = Celery(
        "lewis_tasks", include=TASK_MODULES, task_cls="lewis_tasks.infra.task:LewisTask"
    )
    # the worker's record for `lewis health`, by name: only a worker's consumer loads it (and,
    # loading it, registers the lewis_drain control command); a producer never imports it
    celery_app.steps["consumer"].add("lewis_tasks.infra.fleet_worker:Presence")
    return configure_app(celery_app, settings or get_settings())


_building = threading.Lock()


def get_app() -> Celery:
    """This process's Celery app, built from the settings the first time it is asked for
    (tests re-point it with :func:`configure_app`); the worker's and the reporter's signal
    handlers are connected with it."""
    with _building:
        return _build_app()


@cache
def _build_app() -> Celery:
    celery_app = create_app()
    # the worker signal handlers, and the task metrics reporter's (reporter.py)
    from . import reporter, signals  # noqa: F401

    reporter.connect_signals()
    return celery_app


def __getattr__(name: str) -> Celery:
    """``app``: :func:`get_app` (PEP 562), so ``from …celery_app import app`` keeps working."""
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
