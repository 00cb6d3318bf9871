"""The io worker's pool: coroutine io tasks run on the process's event loop, the rest in threads.

Celery's threads pool hands every message to a pool thread; an io task written as a coroutine
(:func:`~lewis_tasks.tasks.iobatch.io_task`) then hands its body from that thread to the
process's event loop and blocks the thread until the loop is done: two thread hand-offs, and
one blocked thread, per task. This pool runs such a task's whole trace (Celery's, unchanged:
request, signals, result, ack) in a greenlet on the loop's own thread. When the task's body
reaches the loop (:meth:`~lewis_tasks.infra.aio.LoopRuntime.run`), the greenlet gives the
coroutine to the loop and is resumed with its outcome: no thread in between, and any number of
such tasks in flight. Every other task runs in Celery's thread pool, as before.

Why greenlets: Celery's trace is synchronous and cannot be awaited; a greenlet lets it wait on
the loop without a thread of its own. Celery's request and current-task stacks are
greenlet-local when greenlet is installed (``celery.utils.threads``), so tasks interleaved on
the loop thread never see each other's request.

A task that blocks outside the loop (a sync Redis call, a database write) holds the loop while
it does, as it would hold the GIL in a thread; only tasks whose waiting is on the loop are
sent here (:data:`ON_LOOP`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from celery.concurrency.base import apply_target
from celery.concurrency.thread import TaskPool as ThreadTaskPool
from greenlet import getcurrent, greenlet

log = logging.getLogger(__name__)

#: task names whose whole trace runs on the loop (filled by io_task for coroutine bodies)
ON_LOOP: set[str] = set()


class TaskGreenlet(greenlet):  # type: ignore[misc, unused-ignore]
    """A task's trace running on the loop thread; its waits go to the loop."""


def in_task_greenlet() -> bool:
    return isinstance(getcurrent(), TaskGreenlet)


def await_on_loop(awaitable: Awaitable[Any]) -> Any:
    """From a task greenlet: hand ``awaitable`` to the loop, return its result (or raise)."""
    current = getcurrent()
    assert isinstance(current, TaskGreenlet)
    return current.parent.switch(awaitable)


class _Running:
    """Tasks in flight on the loop, so a warm shutdown waits for them."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = threading.Condition()

    def add(self) -> None:
        with self.idle:
            self.count += 1

    def done(self) -> None:
        with self.idle:
            self.count -= 1
            if not self.count:
                self.idle.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: not self.count, timeout)


def _step(g: TaskGreenlet, awaited: Any, running: _Running) -> None:
    """The greenlet switched out: with an awaitable to wait for, or because it ended."""
    if g.dead:
        running.done()
        return
    try:
        future = asyncio.ensure_future(awaited)
    except BaseException as exc:  # not awaitable: the task's error, not the loop's
        _resume(g, None, exc, running)
        return
    future.add_done_callback(lambda f: _settled(g, f, running))


def _settled(g: TaskGreenlet, future: asyncio.Future[Any], running: _Running) -> None:
    if future.cancelled():
        _resume(g, None, asyncio.CancelledError(), running)
        return
    exc = future.exception()
    _resume(g, None if exc is not None else future.result(), exc, running)


def _resume(g: TaskGreenlet, value: Any, exc: BaseException | None, running: _Running) -> None:
    try:
        awaited = g.throw(exc) if exc is not None else g.switch(value)
    except BaseException:  # apply_target reports the task's own errors; this is the pool's
        log.exception("a task on the event loop ended abnormally")
        running.done()
        return
    _step(g, awaited, running)


def _start(fn: Callable[..., Any], args: tuple[Any, ...], running: _Running) -> None:
    g = TaskGreenlet(fn)
    try:
        awaited = g.switch(*args)
    except BaseException:
        log.exception("a task on the event loop ended abnormally")
        running.done()
        return
    _step(g, awaited, running)


class TaskPool(ThreadTaskPool):  # type: ignore[misc, unused-ignore]
    """Celery's threads pool, with the tasks named in :data:`ON_LOOP` run on the event loop."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._running = _Running()

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **options: Any,
    ) -> Any:
        if args and args[0] in ON_LOOP:
            from .runtime import runtime

            loop = runtime().loop_runtime.loop
            self._running.add()
            loop.call_soon_threadsafe(
                _start,
                apply_target,
                (target, args, kwargs, callback, accept_callback),
                self._running,
            )
            return None
        return super().on_apply(target, args, kwargs, callback, accept_callback, **options)

    def on_stop(self) -> None:
        self._running.wait()
        super().on_stop()
