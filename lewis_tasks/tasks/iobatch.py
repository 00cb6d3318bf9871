"""Packed io tasks: many independent calls of one async io task, delivered in one message.

An io task written as a coroutine (:func:`io_task`) runs two ways. Alone, as any Celery task:
its body runs on the worker's persistent event loop. Packed, by ``submit_many(..., pack=N)``:
one ``lewis.io.batch`` message carries N calls, each with its own task id; the worker runs
them concurrently on its loop and stores each call's own result (or failure) under its own id,
so every handle waits, succeeds and fails on its own. Celery's per-message cost (receive,
bookkeeping, ack) is then paid once per N calls instead of once per call — what "fan-out
inside a task" means for many small independent io tasks.

A redelivered envelope runs its calls again; a stored SUCCESS is never overwritten
(result_backend.py), so a caller sees each call's first success. A call that fails with a
passing error (:class:`~lewis_tasks.errors.TransientError`) leaves the pack: it is sent again
alone, under its own id, with the task's first backoff, and retries from there as any task
does. Each call's runtime and outcome are reported under its own task name, so the measured
runtime that sizes the next packs (domain/packing.py) keeps coming from packed runs too.

``submit_many`` packs the tasks named in ``infra.routing.PACKABLE`` by default; :func:`io_task`
refuses a name missing there, so the producer's list and the workers' tasks agree.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any

from celery import states

from ..errors import InvalidInput, TransientError
from ..infra.celery_app import app
from ..infra.reporter import current as current_reporter
from ..infra.routing import IO, MAX_PACK, PACKABLE, PACKED_TASK
from ..infra.runtime import runtime

AsyncBody = Callable[..., Coroutine[Any, Any, Any]]
ASYNC_BODIES: dict[str, AsyncBody] = {}
SYNC_BODIES: dict[str, Callable[..., Any]] = {}  # packable io tasks that never wait
Outcome = tuple[bool, Any, float]  # succeeded, its value or exception, seconds it ran


def io_task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Declare a packable io task. A coroutine body runs on the worker's event loop (alone,
    or packed: concurrently with its neighbours); a plain body (a task that never waits) runs
    in the pool thread, packed calls one after another."""
    if name not in PACKABLE:
        raise InvalidInput(f"io task {name!r}: name it in infra.routing.PACKABLE to declare it")

    def decorate(body: Callable[..., Any]) -> Any:
        if not inspect.iscoroutinefunction(body):
            SYNC_BODIES[name] = body
            # its runtime (which sizes packs) is its thread's CPU time: a body that never
            # waits costs that, and the wall time would add its wait for the GIL behind the
            # pool's other threads (16 messages taken at once run side by side)
            return app.task(name=name, runtime_clock=staticmethod(time.thread_time), **options)(
                body
            )
        ASYNC_BODIES[name] = body

        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> Any:
            return runtime().run(body(*args, **kwargs))

        return app.task(name=name, **options)(run)

    return decorate


@app.task(name=PACKED_TASK)
def run_batch(name: str, calls: list[Any]) -> dict[str, Any]:
    """Run packed ``calls`` (``[task_id, args, kwargs]`` each) of io task ``name``; store each
    result under its own id. Returns counts; a bad call fails alone."""
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_PACK:
        raise InvalidInput(f"a packed batch holds 1..{MAX_PACK} calls, got {calls!r:.80}")
    for call in calls:
        _task_id(call)
    if name in ASYNC_BODIES:
        outcomes = runtime().run(_run_all(ASYNC_BODIES[name], calls))
    elif name in SYNC_BODIES:
        outcomes = [_run_one(SYNC_BODIES[name], args, kwargs) for _, args, kwargs in calls]
    else:  # every call gets the answer, or its handle would wait forever
        packable = ", ".join(sorted(ASYNC_BODIES.keys() | SYNC_BODIES.keys())) or "none"
        error = InvalidInput(
            f"{name!r} cannot run packed: it is not a packable io task (packable: {packable})"
        )
        for task_id, _, _ in calls:
            app.backend.mark_as_failure(task_id, error, call_errbacks=False)
        return {"calls": len(calls), "ok": 0, "failed": len(calls), "retried": 0}
    events: dict[str, str] = {}  # task id → ok, failed or retried
    successes: list[tuple[str, Any]] = []
    for call, (succeeded, value, _) in zip(calls, outcomes, strict=True):
        if succeeded:
            successes.append((call[0], value))
            events[call[0]] = "ok"
        else:
            events[call[0]] = _settle_failure(name, call, value)
    for task_id in _store_successes(successes):  # the store refused it (too large): failed
        events[task_id] = "failed"
    counts = {"ok": 0, "failed": 0, "retried": 0}
    for call, (_, _, seconds) in zip(calls, outcomes, strict=True):
        counts[events[call[0]]] += 1
        _report(name, events[call[0]], seconds)
    return {"calls": len(calls), **counts}


def _store_successes(results: list[tuple[str, Any]]) -> list[str]:
    """Store the calls' results: in one round trip where the backend can (ours), else one by
    one. Returns the ids of those failed instead (the store refused them: too large)."""
    store_many = getattr(app.backend, "store_successes", None)
    if store_many is None:
        for task_id, value in results:
            app.backend.store_result(task_id, value, states.SUCCESS)
        return []
    refused = store_many(results)
    for task_id, error in refused:
        app.backend.mark_as_failure(task_id, error, call_errbacks=False)
    return [task_id for task_id, _ in refused]


def _settle_failure(name: str, call: list[Any], value: Any) -> str:
    """Store one call's failure, or send it again alone (a passing error)."""
    task_id, args, kwargs = call
    if isinstance(value, TransientError) and _retry_alone(name, task_id, args, kwargs):
        return "retried"
    app.backend.mark_as_failure(task_id, value, call_errbacks=False)
    return "failed"


def _retry_alone(name: str, task_id: str, args: list[Any], kwargs: dict[str, Any]) -> bool:
    """The call's first retry as its own message under its own id (Celery's ``retries``
    header and a countdown), so its further retries follow the task's own policy."""
    task = app.tasks.get(name)
    if task is None or not task.max_retries:
        return False
    countdown = min(float(task.retry_backoff_max), 1.0)  # the first step of 2**retries
    task.apply_async(args, kwargs, task_id=task_id, countdown=countdown, retries=1, queue=IO)
    return True


def _report(name: str, event: str, seconds: float) -> None:
    """The call's runtime and outcome under its own name, as if it had run alone."""
    reporter = current_reporter()
    if reporter is None:
        return
    reporter.observe("celery_task_runtime", name, seconds)
    reporter.count({"ok": "succeeded", "failed": "failed", "retried": "retried"}[event], name, IO)


def _task_id(call: Any) -> str:
    if (
        not isinstance(call, list)
        or len(call) != 3
        or not isinstance(call[0], str)
        or not isinstance(call[1], list)
        or not isinstance(call[2], dict)
    ):
        raise InvalidInput(f"a packed call is [task_id, args, kwargs], got {call!r:.80}")
    return call[0]


def _run_one(body: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> Outcome:
    """One call of a plain body; its seconds are CPU time, as when it runs alone."""
    began = time.thread_time()
    try:
        return True, body(*args, **kwargs), time.thread_time() - began
    except Exception as exc:  # this call fails; its neighbours go on
        return False, exc, time.thread_time() - began


async def _run_all(body: AsyncBody, calls: list[Any]) -> list[Outcome]:
    async def one(args: list[Any], kwargs: dict[str, Any]) -> Outcome:
        began = time.perf_counter()
        try:
            return True, await body(*args, **kwargs), time.perf_counter() - began
        except Exception as exc:  # this call fails; its neighbours go on
            return False, exc, time.perf_counter() - began

    return list(await asyncio.gather(*(one(args, kwargs) for _, args, kwargs in calls)))
