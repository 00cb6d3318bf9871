"""Worker lifecycle hooks: refuse unsafe start-ups, and give each process its runtime.

The worker runtime (:mod:`lewis_tasks.infra.runtime`) is built here and nowhere else in a
worker: at ``worker_init`` in the main process (sized for the queues it consumes), anew in each
prefork child at ``worker_process_init``, and closed at ``worker_process_shutdown`` /
``worker_shutdown``; the metrics reporter is started and stopped with it.
"""

from __future__ import annotations

import functools
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, signals

from ..errors import ConfigError, LewisError
from .config import get_settings
from .runtime import close_runtime, runtime, start_runtime

log = logging.getLogger(__name__)


def check_visibility_timeout(app: Celery, visibility_timeout: int | None = None) -> None:
    """ConfigError unless the broker's visibility timeout exceeds every task's hard time limit.

    A task running past it is handed to a second worker while the first still runs it.
    """
    vt = visibility_timeout or get_settings().broker.visibility_timeout
    default = app.conf.task_time_limit or 0
    worst_name, worst = "tasks.time_limit", default
    for name, task in app.tasks.items():
        limit = getattr(task, "time_limit", None) or default
        if limit > worst:
            worst_name, worst = f"the time limit of task {name}", limit
    if not worst:
        raise ConfigError(
            "no hard time limit is set (tasks.time_limit): a stuck task would be "
            "redelivered forever"
        )
    if worst >= vt:
        raise ConfigError(
            f"setting broker.visibility_timeout ({vt:g}s) must exceed every hard time limit, "
            f"but {worst_name} is {worst:g}s: a running task would be delivered again to "
            "another worker"
        )


F = TypeVar("F", bound=Callable[..., Any])

USAGE_EXIT = 2  # the CLI's Exit.USAGE (cli/__init__.py): a bad setting; fix it, do not retry
FAILURE_EXIT = 1


def exit_on_failure(func: F) -> F:
    """Make a start-up signal handler's failure end the process, with one line on stderr.

    Celery calls signal handlers through ``Signal.send``, which logs and swallows every
    ``Exception``: a check raised there would let the worker start anyway (issue 12). It does
    not catch ``SystemExit``, and ``worker_init`` runs before the pool and the consumer start,
    so the worker exits before it consumes anything. A bad setting exits 2, like every other
    ``lewis`` command; anything else 1.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            _exit(f"configuration error: {exc}", USAGE_EXIT)
        except Exception as exc:
            kind = "" if isinstance(exc, LewisError) else f"{type(exc).__name__}: "
            log.exception("worker start-up failed")
            _exit(f"worker start-up failed: {kind}{exc}", FAILURE_EXIT)

    return wrapper  # type: ignore[return-value]


def _exit(message: str, code: int) -> None:
    line = " ".join(message.split())  # one line, whatever the message held
    print(f"lewis: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def startup_checks(app: Celery) -> None:
    """Every check a worker must pass before it consumes; ConfigError names the setting."""
    settings = get_settings()
    if not settings.broker.url:
        raise ConfigError(
            "no broker: set LEWIS_BROKER_URL, or start the embedded stack with `lewis up`"
        )
    app.loader.import_default_modules()  # every task, so every time limit, is known
    check_visibility_timeout(app)
    from .fleet import check_cluster_agreement, database_fingerprint

    check_cluster_agreement(
        settings.broker.url,
        settings.broker.visibility_timeout,
        confirm=lambda names: _answering(app, names),
        database=database_fingerprint(settings.database.url),
    )


def _answering(app: Celery, names: list[str]) -> set[str]:
    """Which of ``names`` answer a ping through the broker now (within a second)."""
    from .broker import broadcast

    return set(broadcast(app, "ping", timeout=1.0, destination=names, limit=len(names)))


@signals.worker_init.connect
@exit_on_failure
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    app = sender.app if sender is not None else None
    if app is None:
        return
    # Celery logs two INFO lines per task (received, succeeded); LewisTask logs one timed line
    # (monitoring.performance_logging). Failures still reach the log at ERROR.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings()
    rt = start_runtime(role=_role_of(app), hostname=getattr(sender, "hostname", "") or "")
    startup_checks(app)
    from .celery_app import configure_worker

    configure_worker(app, settings)
    from .redis_server import eviction_warning

    try:
        warning = eviction_warning(rt.redis())
    except Exception:  # an unreachable broker is reported by Celery's own retry loop
        warning = None
    if warning:
        log.warning(warning)
    _start_reporter(sender, child=False)
    tune_gc(settings.memory.gc_young_threshold)


def _role_of(app: Celery) -> str:
    """The process role for what this worker consumes: it sizes the database pools
    (infra/database.py ROLE_POOLS); prefork children inherit it with the runtime."""
    from .database import role_for_queues

    return role_for_queues(app.amqp.queues.consume_from)


def _start_reporter(sender: Any, *, child: bool) -> None:
    """The runtime's metrics reporter; a failure costs the metrics, never the worker."""
    from . import reporter

    try:
        if child:
            reporter.start_child_reporter()
        else:
            reporter.start_worker_reporter(sender)
    except Exception:
        log.exception("the metrics reporter did not start")


def tune_gc(young: int) -> None:
    """Collect garbage less often, and never scan what start-up built.

    With Python's 700 allocations per young collection, a worker holding thousands of live
    results (a chunk's URL outcomes) walks them over and over: ~10 % of an HTTP batch's CPU.
    Everything alive once the worker has imported its tasks lives for good, so it is frozen
    out of every collection (and prefork children keep sharing those pages).
    """
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young, middle, old)
    gc.freeze()


@signals.worker_process_init.connect
@exit_on_failure
def _on_child_start(**_: Any) -> None:
    # A forked child must not reuse the parent's sockets, engines or event loop: the fork gave
    # it a runtime of its own, with the parent's role and name and none of its resources.
    runtime()
    _start_reporter(None, child=True)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    close_runtime()


_GC_CHECK_EVERY = 16  # tasks between RSS checks: a check costs ~20 µs, a task far more


@signals.task_postrun.connect
def _collect_when_near_the_heap_limit(**_: Any) -> None:
    """Run the garbage collector once RSS passes ``memory.gc_threshold`` × ``max_heap_size``.

    Children are recycled past ``max_heap_size``; collecting a little before that reclaims
    cyclic garbage so a child is recycled for real growth, not for garbage it could free.
    """
    rt = runtime()
    rt.tasks_since_gc_check += 1
    if rt.tasks_since_gc_check < _GC_CHECK_EVERY:
        return
    rt.tasks_since_gc_check = 0
    import gc

    import psutil

    memory = get_settings().memory
    rss = psutil.Process().memory_info().rss
    if rss > memory.gc_threshold * memory.max_heap_size:
        freed = gc.collect()
        log.info(
            "RSS %.0f MiB past memory.gc_threshold (%.0f%% of %.0f MiB): collected %d objects",
            rss / 2**20,
            memory.gc_threshold * 100,
            memory.max_heap_size / 2**20,
            freed,
        )
