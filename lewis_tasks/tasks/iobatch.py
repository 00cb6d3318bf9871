"""Packed io tasks: many independent calls of one async io task, delivered in one message.

An io task written as a coroutine (:func:`io_task`) runs two ways. Alone, as any Celery task:
its body runs on the worker's persistent event loop. Packed, by ``submit_many(..., pack=N)``:
one ``lewis.io.batch`` message carries N calls, each with its own task id; the worker runs
them concurrently on its loop and stores each call's own result (or failure) under its own id,
so every handle waits, succeeds and fails on its own. Celery's per-message cost (receive,
bookkeeping, ack) is then paid once per N calls instead of once per call — what "fan-out
inside a task" means for many small independent io tasks.

A redelivered envelope runs its calls again; a stored SUCCESS is never overwritten
(result_backend.py), so a caller sees each call's first success.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from celery import states

from ..errors import InvalidInput
from ..infra.celery_app import app
from ..infra.routing import MAX_PACK, PACKED_TASK
from ..infra.runtime import runtime

AsyncBody = Callable[..., Coroutine[Any, Any, Any]]
ASYNC_BODIES: dict[str, AsyncBody] = {}


def io_task(name: str, **options: Any) -> Callable[[AsyncBody], Any]:
    """Declare an io task by its coroutine body; it then runs alone or packed."""

    def decorate(body: AsyncBody) -> Any:
        ASYNC_BODIES[name] = body

        @functools.wraps(body)
        def run(*args: Any, **kwargs: Any) -> Any:
            return runtime().run(body(*args, **kwargs))

        return app.task(name=name, **options)(run)

    return decorate


@app.task(name=PACKED_TASK)
def run_batch(name: str, calls: list[Any]) -> dict[str, Any]:
    """Run packed ``calls`` (``[task_id, args, kwargs]`` each) of io task ``name`` concurrently;
    store each result under its own id. Returns counts; a bad call fails alone."""
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_PACK:
        raise InvalidInput(f"a packed batch holds 1..{MAX_PACK} calls, got {calls!r:.80}")
    ids = [_task_id(call) for call in calls]
    body = ASYNC_BODIES.get(name)
    if body is None:  # every call gets the answer, or its handle would wait forever
        error = InvalidInput(
            f"{name!r} cannot run packed: it is not an async io task "
            f"(packable: {', '.join(sorted(ASYNC_BODIES)) or 'none'})"
        )
        for task_id in ids:
            app.backend.mark_as_failure(task_id, error, call_errbacks=False)
        return {"calls": len(calls), "ok": 0, "failed": len(calls)}
    outcomes = runtime().run(_run_all(body, calls))
    ok = 0
    for task_id, (succeeded, value) in zip(ids, outcomes, strict=True):
        if succeeded:
            app.backend.store_result(task_id, value, states.SUCCESS)
            ok += 1
        else:
            app.backend.mark_as_failure(task_id, value, call_errbacks=False)
    return {"calls": len(calls), "ok": ok, "failed": len(calls) - ok}


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


async def _run_all(body: AsyncBody, calls: list[Any]) -> list[tuple[bool, Any]]:
    async def one(args: list[Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        try:
            return True, await body(*args, **kwargs)
        except Exception as exc:  # this call fails; its neighbours go on
            return False, exc

    return list(await asyncio.gather(*(one(args, kwargs) for _, args, kwargs in calls)))
