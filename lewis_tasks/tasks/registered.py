"""What ``lewis profile`` and ``lewis bench`` may run in a worker: names → callables, nothing else.

A profile or benchmark request names an entry here; any other name is refused (InvalidInput
listing these), so a message can never make a worker import and run an arbitrary dotted path.
Entries are the project's own tasks that are safe to run inline (the ``lewis.bench`` no-ops
and ``io_sleep``, whose coroutine body a profile runs on a private loop in the profiled thread) and the CPU-bound workloads of
:mod:`lewis_tasks.domain.workloads`, shaped like the platform's merge and match steps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..domain import workloads
from ..domain.callables import Registry
from ..infra.celery_app import app
from . import bench  # noqa: F401  (defines the lewis.bench tasks looked up below)
from .iobatch import ASYNC_BODIES

PROFILABLE = Registry("profilable task")
BENCHMARKABLE = Registry("benchmark target")



def _task_function(task_name: str) -> Callable[..., Any]:
    """Task ``task_name``'s own function, looked up at call time.

    Not at import: binding a task freezes its options (time limits…) from the configuration of
    that moment, and a process may still reconfigure the app after importing this module. The
    profile shows this one frame above the task's function.
    """
    def run_task_inline(*args: Any, **kwargs: Any) -> Any:
        body = ASYNC_BODIES.get(task_name)
        if body is not None:
            # An async io task's body would run on the worker's loop thread, out of the
            # profiler's sight; here it runs on a private loop in this (profiled) thread.
            return asyncio.run(body(*args, **kwargs))
        return app.tasks[task_name].run(*args, **kwargs)

    run_task_inline.__qualname__ = f"run_task_inline[{task_name}]"
    return run_task_inline


_TARGETS: dict[str, Callable[..., Any]] = {
    "lewis.bench.noop": _task_function("lewis.bench.noop"),
    "lewis.bench.io_noop": _task_function("lewis.bench.io_noop"),
    "lewis.bench.io_sleep": _task_function("lewis.bench.io_sleep"),
    "workload.merge_histograms": workloads.merge_histograms,
    "workload.merge_scan_chunks": workloads.merge_scan_chunks,
    "workload.match_services": workloads.match_services,
    "workload.spin": workloads.spin,
}

# Arguments used when a request gives none (io_sleep needs its seconds).
DEFAULT_ARGS: dict[str, list[Any]] = {"lewis.bench.io_sleep": [0.01]}

for _name, _func in _TARGETS.items():
    PROFILABLE.register(_name, _func)
    BENCHMARKABLE.register(_name, _func)


def default_args(name: str) -> list[Any]:
    """The positional arguments ``name`` runs with when the request gives none."""
    return list(DEFAULT_ARGS.get(name, []))


__all__ = ["BENCHMARKABLE", "DEFAULT_ARGS", "PROFILABLE", "default_args"]
