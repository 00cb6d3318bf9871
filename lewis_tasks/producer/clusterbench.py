"""Cluster benchmarks through the broker, run from the producer: round trips and throughput per queue.

They run here, in the producer process, and not inside a task: a task that waits on other tasks
holds a worker slot they may need (on a one-slot cpu worker it would wait for itself until
its time limit). Stored as runs of suite ``cluster`` (one per queue for the no-op figures)
through the recorder the caller hands in (``lewis bench``: report/runs.py's
``record_benchmark_run``; the producer writes no rows itself):

* ``latency`` — sequential submit → result round trips of a no-op on each queue (p50/p99);
* ``throughput`` — N no-ops pushed at once with :func:`submit_many`, timed from the first push
  until the last result exists (polled with MGET on the Redis result backend);
* ``scan`` and ``http`` — ports/s of a loopback scan and requests/s of a load test, through
  the public producer API (:mod:`.stackbench`).

Queues with no live consumer are skipped and named, never waited on.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout

from ..domain.benchstats import percentile
from ..domain.callables import Limits
from ..errors import InvalidInput
from ..infra.config import get_settings
from ..infra.routing import QUEUES
from .base import TaskHandle, _app, submit, submit_many
from .stackbench import StackFigure, measure_http, measure_scan

CLUSTER_SUITES = ("latency", "throughput", "scan", "http")
NOOP_TASKS = {"io": "lewis.bench.io_noop"}  # other queues: lewis.bench.noop sent to that queue
DEFAULT_NOOP = "lewis.bench.noop"
_POLL = 0.005  # seconds between result polls when none finished: the figure's resolution
_MGET = 1000  # keys per DEL at the end
_WINDOW = 64  # oldest pending result keys read per poll
# stores one run: (run_id, *, suite, name, queue, metrics, settings, **options) -> the run
Recorder = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class QueueLatency:
    """Sequential round trips of a no-op on one queue."""

    queue: str
    task: str
    samples: int  # round trips completed
    failures: int
    p50_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    stopped_early: bool

    def metrics(self) -> dict[str, Any]:
        """As stored: p50_ms/p99_ms (what the report charts), the rest prefixed ``latency_``."""
        return {
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "mean_ms": self.mean_ms,
            "max_ms": self.max_ms,
            "latency_samples": self.samples,
            "latency_failures": self.failures,
            "latency_stopped_early": self.stopped_early,
        }


@dataclass(frozen=True)
class QueueThroughput:
    """N no-ops pushed at once on one queue, until the last result."""

    queue: str
    task: str
    tasks: int
    done: int
    failures: int
    seconds: float
    throughput_per_s: float  # tasks finished per second, from the first push
    enqueue_tasks_per_sec: float  # not "_per_s": the report charts those, and this is no drain rate
    stopped_early: bool

    def metrics(self) -> dict[str, Any]:
        """As stored: throughput_per_s (what the report charts), the rest prefixed ``throughput_``."""
        return {
            "throughput_per_s": self.throughput_per_s,
            "enqueue_tasks_per_sec": self.enqueue_tasks_per_sec,
            "throughput_tasks": self.tasks,
            "throughput_done": self.done,
            "throughput_failures": self.failures,
            "throughput_seconds": self.seconds,
            "throughput_stopped_early": self.stopped_early,
        }


@dataclass(frozen=True)
class ClusterBenchmark:
    """One ``benchmark_cluster`` call: its figures, what was skipped and why, the stored ids."""

    started_at: float
    latency: tuple[QueueLatency, ...]
    throughput: tuple[QueueThroughput, ...]
    stack: tuple[StackFigure, ...] = ()  # scan ports/s, HTTP requests/s
    skipped: dict[str, str] = field(default_factory=dict)  # "latency:control" → reason
    run_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "latency": [asdict(x) for x in self.latency],
            "throughput": [asdict(x) for x in self.throughput],
            "stack": [x.to_dict() for x in self.stack],
            "skipped": self.skipped,
            "run_ids": list(self.run_ids),
        }

    def format_table(self) -> str:
        out: list[str] = []
        if self.latency:
            out += [
                "",
                "round trip (sequential no-op submit → result)",
                f"{'queue':<9}{'samples':>8}{'fail':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
            ]
            out += [
                f"{x.queue:<9}{x.samples:>8}{x.failures:>6}{_ms(x.p50_ms)}{_ms(x.p99_ms)}"
                f"{_ms(x.max_ms)}" + ("  STOPPED at max_seconds" if x.stopped_early else "")
                for x in self.latency
            ]
        if self.throughput:
            out += [
                "",
                "throughput (no-ops pushed at once, until the last result)",
                f"{'queue':<9}{'tasks':>7}{'done':>7}{'fail':>6}{'seconds':>9}{'tasks/s':>10}"
                f"{'enqueue/s':>11}",
            ]
            out += [
                f"{x.queue:<9}{x.tasks:>7}{x.done:>7}{x.failures:>6}{x.seconds:>9.3f}"
                f"{x.throughput_per_s:>10,.0f}{x.enqueue_tasks_per_sec:>11,.0f}"
                + ("  STOPPED at max_seconds" if x.stopped_early else "")
                for x in self.throughput
            ]
        for fig in self.stack:
            d = fig.detail
            if fig.name == "scan":
                out += [
                    "",
                    f"scan: {d['ports']:,} ports of {d['target']} in {d['chunks']} chunks, "
                    f"{fig.seconds:.2f} s = {fig.rate_per_s:,.0f} ports/s ({d['open']} open)",
                ]
            else:
                out += [
                    "",
                    f"http: {d['requests']:,} requests in {fig.seconds:.2f} s = "
                    f"{fig.rate_per_s:,.0f} req/s, p50 {_ms(d['p50_ms']).strip()} ms, "
                    f"p99 {_ms(d['p99_ms']).strip()} ms, {d['errors']} errors "
                    f"(concurrency {d['concurrency']}, {d['workers']} io process(es); "
                    f"target: {d['target']})",
                ]
        if self.skipped:
            out.append("")
        out += [f"skipped {what}: {why}" for what, why in sorted(self.skipped.items())]
        return "\n".join(out).strip("\n")


def _ms(value: float | None) -> str:
    return f"{'-':>9}" if value is None else f"{value:>9.2f}"


def benchmark_cluster(
    suites: Sequence[str] = CLUSTER_SUITES,
    *,
    queues: Sequence[str] = ("io", "cpu"),
    samples: int = 200,
    tasks: int = 2_000,
    warmup: int = 10,
    max_seconds: float | None = None,
    scan_ports: str = "1-20000",
    http_url: str | None = None,
    http_concurrency: int = 100,
    http_duration: float = 5.0,
    record: Recorder | None = None,
    app: Celery | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ClusterBenchmark:
    """Measure the running stack through its broker; each figure stored as a ``cluster`` run
    by ``record`` (report.runs.record_benchmark_run; None: nothing stored).

    ``latency`` and ``throughput`` run per queue in ``queues``; ``scan`` and ``http`` once,
    on the io and cpu workers (see :mod:`.stackbench`). Bounded by the ``profiling``
    settings: ``samples`` and ``tasks`` by max_iterations, and each measurement by
    ``max_seconds`` (default profiling.max_seconds), past which it stops with what it has.
    """
    settings = get_settings()
    p = settings.profiling
    limits = Limits(p.max_seconds, p.top_n, p.max_iterations, p.max_concurrent)
    unknown = [s for s in suites if s not in CLUSTER_SUITES]
    if unknown or not suites:
        raise InvalidInput(
            f"unknown cluster suite {', '.join(unknown) or '(none)'}; "
            f"suites: {', '.join(CLUSTER_SUITES)}"
        )
    bad = [q for q in queues if q not in QUEUES]
    if bad or not queues:
        raise InvalidInput(
            f"unknown queue {', '.join(bad) or '(none)'}; queues: {', '.join(QUEUES)}"
        )
    samples = limits.check_iterations(samples, "samples")
    tasks = limits.check_iterations(tasks, "tasks")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InvalidInput(f"warmup must be a whole number, 0 or more, got {warmup!r}")
    if warmup:
        warmup = limits.check_iterations(warmup, "warmup")
    seconds = limits.check_seconds(max_seconds if max_seconds is not None else p.max_seconds)
    app = _app(app)
    step = on_step or (lambda _msg: None)
    consumers = queue_consumers(app, settings.monitoring.ping_timeout)
    started, skipped = time.time(), {}
    latency: list[QueueLatency] = []
    throughput: list[QueueThroughput] = []
    for queue in queues:
        per_queue = [s for s in suites if s in ("latency", "throughput")]
        if per_queue and not consumers.get(queue):
            skipped.update(
                {f"{s}:{queue}": "no live worker consumes this queue" for s in per_queue}
            )
            continue
        task = NOOP_TASKS.get(queue, DEFAULT_NOOP)
        if "latency" in suites:
            step(f"latency on {queue}: {samples} round trips of {task}")
            latency.append(measure_latency(app, queue, task, samples, warmup, seconds))
        if "throughput" in suites:
            step(f"throughput on {queue}: {tasks} × {task}")
            throughput.append(measure_throughput(app, queue, task, tasks, seconds))
    stack: list[StackFigure] = []
    for suite in (s for s in ("scan", "http") if s in suites):
        idle = [q for q in ("io", "cpu") if not consumers.get(q)]
        if idle:
            skipped[suite] = f"no live worker consumes {' and '.join(idle)}"
            continue
        if suite == "scan":
            step(f"scan of 127.0.0.1 ports {scan_ports}")
            stack.append(measure_scan(app, ports=scan_ports, max_seconds=seconds))
        else:
            step(f"http load test for {http_duration:g} s at concurrency {http_concurrency}")
            stack.append(
                measure_http(
                    app,
                    url=http_url,
                    concurrency=http_concurrency,
                    duration=http_duration,
                    max_seconds=seconds,
                )
            )
    run_ids = (
        _store(
            record,
            settings,
            queues,
            latency,
            throughput,
            stack,
            {
                "suites": list(suites),
                "samples": samples,
                "warmup": warmup,
                "tasks": tasks,
                "max_seconds": seconds,
                # workers per queue while it ran: `lewis size` turns rates into per-process
                "consumers": {q: len(v) for q, v in consumers.items()},
            },
        )
        if record
        else []
    )
    return ClusterBenchmark(
        started, tuple(latency), tuple(throughput), tuple(stack), skipped, tuple(run_ids)
    )


def _store(
    record: Recorder,
    settings: Any,
    queues: Sequence[str],
    latency: Sequence[QueueLatency],
    throughput: Sequence[QueueThroughput],
    stack: Sequence[StackFigure],
    options: dict[str, Any],
) -> list[str]:
    """One run per queue with both no-op figures (one series, one colour per queue in the
    report), and one per stack figure."""
    rows: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
    for queue in queues:
        metrics: dict[str, Any] = {}
        figures: list[QueueLatency | QueueThroughput] = [*latency, *throughput]
        for fig in figures:
            if fig.queue == queue:
                metrics.update(fig.metrics())
        if metrics:
            rows.append(("noop", queue, metrics, {"task": NOOP_TASKS.get(queue, DEFAULT_NOOP)}))
    rows += [(fig.name, fig.queue, fig.metrics(), {}) for fig in stack]
    run_ids = []
    for name, queue, metrics, extra in rows:
        run_id = uuid.uuid4().hex
        record(
            run_id,
            suite="cluster",
            name=name,
            queue=queue,
            metrics=metrics,
            settings=settings,
            **options,
            **extra,
        )
        run_ids.append(run_id)
    return run_ids


def queue_consumers(app: Celery, timeout: float) -> dict[str, list[str]]:
    """Live workers per queue, from one ``active_queues`` broadcast on a connection of its own
    (see :func:`lewis_tasks.infra.broker.broadcast` for why)."""
    from ..infra.broker import broadcast

    replies = broadcast(app, "active_queues", timeout=timeout)
    out: dict[str, list[str]] = {}
    for worker, queues in sorted(replies.items()):
        for queue in queues or ():
            out.setdefault(str(queue.get("name")), []).append(worker)
    return out


def measure_latency(
    app: Celery, queue: str, task: str, samples: int, warmup: int, max_seconds: float
) -> QueueLatency:
    """``samples`` sequential round trips of ``task`` on ``queue`` after ``warmup`` untimed ones."""
    deadline = time.monotonic() + max_seconds
    rtts: list[float] = []
    failures, stopped = 0, False
    for index in range(warmup + samples):
        left = deadline - time.monotonic()
        if left <= 0:
            stopped = True
            break
        began = time.perf_counter()
        try:
            submit(task, app=app, queue=queue).wait(timeout=left)
        except ResultTimeout:
            stopped = True
            break
        except Exception:  # a failed round trip is counted, not fatal
            if index >= warmup:
                failures += 1
            continue
        if index >= warmup:
            rtts.append((time.perf_counter() - began) * 1000)
    return QueueLatency(
        queue=queue,
        task=task,
        samples=len(rtts),
        failures=failures,
        p50_ms=percentile(rtts, 50) if rtts else None,
        p99_ms=percentile(rtts, 99) if rtts else None,
        mean_ms=sum(rtts) / len(rtts) if rtts else None,
        max_ms=max(rtts) if rtts else None,
        stopped_early=stopped,
    )


def measure_throughput(
    app: Celery, queue: str, task: str, tasks: int, max_seconds: float
) -> QueueThroughput:
    """Push ``tasks`` no-ops at once with :func:`submit_many`; time until the last result."""
    began = time.monotonic()
    handles = submit_many(  # one call to a message: the dispatch path is what is measured
        task, (((), {}) for _ in range(tasks)), app=app, queue=queue, batch=2000, pack=1
    )
    enqueued = time.monotonic()
    done, failures, last = _poll_results(app, handles, began + max_seconds)
    seconds = max((last or enqueued) - began, 1e-9)
    return QueueThroughput(
        queue=queue,
        task=task,
        tasks=tasks,
        done=done,
        failures=failures,
        seconds=seconds,
        throughput_per_s=done / seconds,
        enqueue_tasks_per_sec=tasks / max(enqueued - began, 1e-9),
        stopped_early=done < tasks,
    )


def _poll_results(
    app: Celery, handles: Sequence[TaskHandle], deadline: float
) -> tuple[int, int, float | None]:
    """(finished, failed, when the last finished): MGET on the result keys, then delete them.

    Only a window of the oldest pending keys is read per poll: a queue runs roughly in order,
    and reading every pending key each round would load the very Redis and CPU being measured.
    """
    backend = app.backend
    client = getattr(backend, "client", None)
    if client is None or not hasattr(backend, "get_key_for_task"):
        return _wait_each(handles, deadline)
    pending = [backend.get_key_for_task(h.id) for h in handles]
    every = list(pending)
    done = failures = 0
    last: float | None = None
    try:
        while pending and time.monotonic() < deadline:
            window = pending[:_WINDOW]
            finished: set[Any] = set()
            for key, raw in zip(window, client.mget(window), strict=True):
                if raw is None:
                    continue
                status = backend.decode_result(raw).get("status")
                if status in ("SUCCESS", "FAILURE"):  # not a retry or another interim state
                    finished.add(key)
                    failures += status == "FAILURE"
            if finished:
                done += len(finished)
                last = time.monotonic()
                pending = [k for k in window if k not in finished] + pending[_WINDOW:]
            else:
                time.sleep(_POLL)
    finally:
        for start in range(0, len(every), _MGET):
            client.delete(*every[start : start + _MGET])
    return done, failures, last


def _wait_each(handles: Sequence[TaskHandle], deadline: float) -> tuple[int, int, float | None]:
    done = failures = 0
    last: float | None = None
    for handle in handles:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            handle.wait(timeout=left)
        except ResultTimeout:
            break
        except Exception:
            failures += 1
        done += 1
        last = time.monotonic()
    return done, failures, last


__all__ = [
    "CLUSTER_SUITES",
    "ClusterBenchmark",
    "QueueLatency",
    "QueueThroughput",
    "benchmark_cluster",
    "measure_latency",
    "measure_throughput",
    "queue_consumers",
]
