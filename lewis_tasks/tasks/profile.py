"""Profiling, diagnosis and function benchmarks as cpu tasks, and the worker-side diagnose command.

* ``lewis.profile.run`` — profile one *registered* callable (:data:`PROFILABLE`, built from
  :mod:`lewis_tasks.domain.benchtargets`) under cProfile
  and tracemalloc; a target that raises still gives its profile, with the exception recorded.
* ``lewis.profile.diagnose`` — broadcast the ``lewis_diagnose`` remote-control command to every
  live worker (or one), and roll the replies up into one cluster report.
* ``lewis.bench.run`` — time a registered callable serially or from a thread pool.

Every request is bounded by the ``profiling`` settings (the bound is named when refused) and by
the task's own soft time limit; every run is stored, keyed by the task id (a redelivery
overwrites, never duplicates). Cluster benchmarks through the broker are not here: a task that
waits on other tasks would hold the very worker slot they need, so they run in the producer
(:mod:`lewis_tasks.producer.clusterbench`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import inspect_command

from ..domain.benchstats import benchmark_concurrent, benchmark_function, benchmark_run_row
from ..domain.benchtargets import TASK_TARGETS, WORKLOAD_TARGETS, default_args
from ..domain.callables import Limits, Registry
from ..domain.diagnostics import aggregate, collect_system, diagnose_worker
from ..domain.profiler import profile_call
from ..errors import InvalidInput
from ..infra.broker import broadcast
from ..infra.celery_app import app
from ..infra.config import Settings, get_settings
from . import bench  # noqa: F401  (defines the lewis.bench tasks looked up below)
from .iobatch import ASYNC_BODIES

DIAGNOSE_COMMAND = "lewis_diagnose"
MAX_DIAGNOSE_INTERVAL = 2.0  # seconds a diagnose holds each worker's consumer thread
MAX_PSTATS_INLINE = 8 << 20  # bytes of .pstats returned in a result (it travels through Redis)
TASK_TIME_SHARE = 0.8  # a run may use this share of the task's soft time limit
DEFAULT_ITERATIONS = 100


# ---------------------------------------------------------------- what may run


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


def _registry(kind: str) -> Registry:
    registry = Registry(kind)
    for name in TASK_TARGETS:
        registry.register(name, _task_function(name))
    for name, func in WORKLOAD_TARGETS.items():
        registry.register(name, func)
    return registry


PROFILABLE = _registry("profilable task")
BENCHMARKABLE = _registry("benchmark target")


# ---------------------------------------------------------------- bounds and arguments


def limits_of(settings: Settings) -> Limits:
    """The profiling bounds of ``settings``."""
    p = settings.profiling
    return Limits(
        max_seconds=p.max_seconds,
        top_n=p.top_n,
        max_iterations=p.max_iterations,
        max_concurrent=p.max_concurrent,
    )


def run_seconds(requested: float | None, settings: Settings) -> float:
    """``requested`` checked against profiling.max_seconds and the task's time limit (or the default)."""
    room = settings.tasks.soft_time_limit * TASK_TIME_SHARE
    if requested is None:
        return min(settings.profiling.max_seconds, room)
    limits_of(settings).check_seconds(requested)
    if requested > room:
        raise InvalidInput(
            f"max_seconds={requested} is over the bound {room:g} s ({TASK_TIME_SHARE:.0%} of "
            f"tasks.soft_time_limit={settings.tasks.soft_time_limit}): the task would be killed"
        )
    return float(requested)


def call_arguments(name: str, args: Any, kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments of a request, type-checked; registered defaults if none."""
    if args is None:
        args = default_args(name) if not kwargs else []
    if not isinstance(args, list | tuple):
        raise InvalidInput(f"args must be a list, got {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidInput("kwargs must be a mapping of names to values")
    return list(args), dict(kwargs)


def _run_id(task: Any) -> str:
    return str(task.request.id or uuid.uuid4())


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidInput(f"{name} must be true or false, got {value!r}")
    return value


# ---------------------------------------------------------------- profile


@app.task(name="lewis.profile.run", bind=True)
def profile_run(
    self: Any,
    name: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    top_n: int | None = None,
    trace_memory: bool = True,
    max_seconds: float | None = None,
    save_pstats: bool = False,
    return_pstats: bool = False,
) -> dict[str, Any]:
    """Profile registered callable ``name`` once; the stored report (and optionally its .pstats)."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.runs import save_profile

    settings = get_settings()
    limits = limits_of(settings)
    func = PROFILABLE.get(name)
    call_args, call_kwargs = call_arguments(name, args, kwargs)
    top = limits.check_top_n(top_n if top_n is not None else settings.profiling.top_n)
    seconds = run_seconds(max_seconds, settings)
    trace = _flag("trace_memory", trace_memory)
    run_id = _run_id(self)
    target = None
    if _flag("save_pstats", save_pstats) or _flag("return_pstats", return_pstats):
        folder = settings.home / "profiles"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{run_id}.pstats"
    report = profile_call(
        func,
        call_args,
        call_kwargs,
        top_n=top,
        max_seconds=seconds,
        trace_memory=trace,
        pstats_path=target,
        limits=limits,
        name=name,
    )
    status = "timed_out" if report.timed_out else "ok" if report.ok else "raised"
    result = report.to_dict()
    with session_scope(get_engine()) as session:
        save_profile(
            session,
            run_id,
            task_name=name,
            status=status,
            result=result,
            pstats_path=report.pstats_path,
        )
    out = {"id": run_id, "status": status, "worker": self.request.hostname, **result}
    if return_pstats and report.pstats_path:
        out.update(_inline_pstats(Path(report.pstats_path)))
    return out


def _inline_pstats(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_PSTATS_INLINE:
        return {
            "pstats_b64": None,
            "pstats_note": f"{size} bytes is over the {MAX_PSTATS_INLINE} inline cap; "
            f"the file stays on the worker at {path}",
        }
    return {"pstats_b64": base64.b64encode(path.read_bytes()).decode("ascii")}


# ---------------------------------------------------------------- diagnose


@inspect_command(name=DIAGNOSE_COMMAND, args=[("interval", float)], signature="[interval=0.2]")
def lewis_diagnose(state: Any, interval: float = 0.2, **_: Any) -> dict[str, Any]:
    """This worker's system snapshot, pool use and recommendations (runs in its consumer)."""
    settings = get_settings()
    interval = min(max(float(interval), 0.05), MAX_DIAGNOSE_INTERVAL)
    size, busy, recycle = pool_figures(state.consumer, settings)
    home = str(settings.home)
    snapshot = collect_system(
        disk_path=home if os.path.isdir(home) else "/", pool_pid=os.getpid(), interval=interval
    )
    report = diagnose_worker(
        state.hostname, snapshot, pool_size=size, pool_busy=busy, recycle_limit_bytes=recycle
    )
    return {
        **report.to_dict(),
        "pool": type(state.consumer.pool).__module__.rsplit(".", 1)[-1],
        "recycle_limit_bytes": recycle,
    }


def pool_figures(consumer: Any, settings: Settings) -> tuple[int | None, int, int | None]:
    """Pool size, slots busy now, and the child memory recycle limit (bytes) of a worker.

    Busy = requests this worker is executing (its own state, not a guess from CPU). The recycle
    limit is the worker's ``--max-memory-per-child``; a prefork pool started without one is
    treated as having settings.memory.max_heap_size, the cpu profile's default.
    """
    pool = getattr(consumer, "pool", None)
    size = getattr(pool, "num_processes", None) if pool is not None else None
    controller = getattr(consumer, "controller", None)
    kib = getattr(controller, "max_memory_per_child", None)
    prefork = pool is not None and type(pool).__module__.endswith("prefork")
    recycle = int(kib) * 1024 if kib else settings.memory.max_heap_size if prefork else None
    return (int(size) if size else None), len(worker_state.active_requests), recycle


@app.task(name="lewis.profile.diagnose", bind=True)
def diagnose(self: Any, worker: str | None = None, interval: float = 0.2) -> dict[str, Any]:
    """Diagnose every live worker (or ``worker``) through the broker; one stored cluster report.

    Queue-wait trends are not measured yet (the broker keeps no enqueue times), so the
    queue-wait rule gets no input.
    """
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.runs import save_diagnosis

    settings = get_settings()
    if (
        isinstance(interval, bool)
        or not isinstance(interval, int | float)
        or not 0 < interval <= MAX_DIAGNOSE_INTERVAL
    ):
        raise InvalidInput(
            f"interval must be in (0, {MAX_DIAGNOSE_INTERVAL}] seconds, got {interval!r}"
        )
    if worker is not None and not isinstance(worker, str):
        raise InvalidInput(f"worker must be a worker name, got {worker!r}")
    wait = settings.monitoring.ping_timeout
    live = sorted(broadcast(app, "ping", timeout=wait))
    if worker is not None:
        if worker not in live:
            raise InvalidInput(
                f"no live worker named {worker!r}; live: {', '.join(live) or 'none'}"
            )
        live = [worker]
    replies = broadcast(
        app,
        DIAGNOSE_COMMAND,
        arguments={"interval": float(interval)},
        destination=live,
        limit=len(live),
        timeout=interval + wait + 2.0,
    )
    by_worker: dict[str, Any] = dict.fromkeys(live)
    errors: dict[str, str] = {}
    for name, data in replies.items():
        if isinstance(data, dict) and "snapshot" in data:
            by_worker[name] = data
        else:  # an old worker without the command, or the command failed there
            errors[name] = str(data.get("error", data) if isinstance(data, dict) else data)
    report = aggregate(by_worker).to_dict()
    for row in report["workers"]:  # what the roll-up does not model: the pool kind and limit
        reply = by_worker[row["worker"]]
        row.update(pool=reply.get("pool"), recycle_limit_bytes=reply.get("recycle_limit_bytes"))
    report.update(id=_run_id(self), worker=worker, errors=errors)
    with session_scope(get_engine()) as session:
        save_diagnosis(session, report["id"], worker=worker, report=report)
    return report


# ---------------------------------------------------------------- function benchmarks


@app.task(name="lewis.bench.run", bind=True)
def bench_run(
    self: Any,
    target: str,
    iterations: int | None = None,
    warmup: int = 0,
    concurrency: int | None = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Benchmark registered callable ``target``: serially, or on ``concurrency`` threads.

    Failing iterations are counted in the success rate, never abort the run. Stored with the
    machine, package versions and the settings that shape the figures.
    """
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.runs import store_benchmark_run

    settings = get_settings()
    limits = limits_of(settings)
    func = BENCHMARKABLE.get(target)
    call_args, call_kwargs = call_arguments(target, args, kwargs)
    count = iterations if iterations is not None else min(DEFAULT_ITERATIONS, limits.max_iterations)
    seconds = run_seconds(max_seconds, settings)
    if concurrency is None:
        stats: Any = benchmark_function(
            func,
            count,
            args=call_args,
            kwargs=call_kwargs,
            warmup=warmup,
            max_seconds=seconds,
            limits=limits,
            name=target,
        )
        kind, timings = "serial", stats.timings
        throughput = stats.iterations_run / stats.total_seconds if stats.total_seconds else 0.0
    else:
        stats = benchmark_concurrent(
            func,
            count,
            concurrency,
            args=call_args,
            kwargs=call_kwargs,
            max_seconds=seconds,
            limits=limits,
            name=target,
        )
        kind, timings, throughput = "concurrent", stats.latency, stats.tasks_per_s
    metrics: dict[str, Any] = {
        "throughput_per_s": throughput,
        "success_rate": stats.success_rate,
        "failures": stats.failures,
        "stopped_early": stats.stopped_early,
    }
    if timings is not None:
        metrics.update(
            p50_ms=timings.median_s * 1e3,
            p99_ms=timings.p99_s * 1e3,
            mean_ms=timings.mean_s * 1e3,
            min_ms=timings.min_s * 1e3,
            max_ms=timings.max_s * 1e3,
            stdev_ms=timings.stdev_s * 1e3,
        )
    queue = (self.request.delivery_info or {}).get("routing_key") or "cpu"
    row = benchmark_run_row(
        suite="function",
        name=target,
        queue=queue,
        metrics=metrics,
        settings=settings.redacted(),
        kind=kind,
        iterations=count,
        warmup=warmup,
        concurrency=concurrency,
        args=call_args,
        kwargs=call_kwargs,
        max_seconds=seconds,
    )
    with session_scope(get_engine()) as session:
        stored = store_benchmark_run(session, _run_id(self), row)
    return {**stored, "kind": kind, "worker": self.request.hostname, "stats": stats.to_dict()}


__all__ = [
    "BENCHMARKABLE",
    "PROFILABLE",
    "DIAGNOSE_COMMAND",
    "bench_run",
    "call_arguments",
    "diagnose",
    "lewis_diagnose",
    "limits_of",
    "pool_figures",
    "profile_run",
    "run_seconds",
]
