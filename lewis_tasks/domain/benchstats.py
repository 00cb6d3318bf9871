"""Benchmark a callable — serially or from a thread pool — and the statistics of its timings.

A failing iteration is counted (by exception type) and the run goes on: a flaky target gives a
success rate, not a crash. Timing statistics cover the *successful* iterations only, since a
failure that returns early would make the target look fast. Runs are bounded by iterations and
seconds; a request over the configured :class:`~.callables.Limits` is refused before it starts,
and a run that reaches ``max_seconds`` stops between iterations (one already running finishes)
and says so with ``stopped_early``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import socket
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil

from ..errors import InvalidInput
from .callables import Limits, qualified_name, require_within

DEFAULT_PACKAGES = ("celery", "kombu", "redis", "aiohttp", "sqlalchemy", "psutil", "lewis-tasks")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), interpolating linearly between ranks like numpy's default."""
    if not values:
        raise InvalidInput("percentile of no values")
    if not 0 <= q <= 100:
        raise InvalidInput(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median_of_runs(values: Sequence[float]) -> float:
    """The median of repeated measurements (e.g. 3 runs of one benchmark): robust to one outlier."""
    if not values:
        raise InvalidInput("median of no runs")
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is 0 (no baseline to compare)."""
    return None if denominator == 0 else numerator / denominator


@dataclass(frozen=True)
class TimingSummary:
    """Seconds per call, summarised."""

    count: int
    min_s: float
    max_s: float
    mean_s: float
    median_s: float
    stdev_s: float  # sample standard deviation; 0 for a single value
    p95_s: float
    p99_s: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> TimingSummary | None:
        """The summary of ``seconds``; None when there are none (nothing succeeded)."""
        if not seconds:
            return None
        return cls(
            count=len(seconds),
            min_s=min(seconds),
            max_s=max(seconds),
            mean_s=statistics.fmean(seconds),
            median_s=statistics.median(seconds),
            stdev_s=statistics.stdev(seconds) if len(seconds) > 1 else 0.0,
            p95_s=percentile(seconds, 95),
            p99_s=percentile(seconds, 99),
        )

    def format_line(self) -> str:
        ms = 1000.0
        return (
            f"min {self.min_s * ms:.3f} ms, median {self.median_s * ms:.3f} ms, mean "
            f"{self.mean_s * ms:.3f} ms, p95 {self.p95_s * ms:.3f} ms, p99 "
            f"{self.p99_s * ms:.3f} ms, max {self.max_s * ms:.3f} ms, stdev "
            f"{self.stdev_s * ms:.3f} ms"
        )


@dataclass(frozen=True)
class BenchmarkStats:
    """One serial benchmark run."""

    name: str
    iterations_requested: int
    iterations_run: int
    warmup: int
    successes: int
    failures: int
    errors_by_type: dict[str, int]
    success_rate: float  # 0..1 of the iterations run
    total_seconds: float  # wall time of the timed iterations, warm-up excluded
    timings: TimingSummary | None  # successful iterations only
    stopped_early: bool
    max_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        out = [
            f"benchmark {self.name}: {self.iterations_run}/{self.iterations_requested} "
            f"iterations (+{self.warmup} warm-up) in {self.total_seconds:.3f} s, success "
            f"{self.success_rate:.1%}"
        ]
        if self.stopped_early:
            out.append(f"STOPPED at max_seconds={self.max_seconds}")
        out.append(self.timings.format_line() if self.timings else "no successful iteration")
        out += [f"  {count:>8} × {kind}" for kind, count in sorted(self.errors_by_type.items())]
        return "\n".join(out)


@dataclass(frozen=True)
class ConcurrencyStats:
    """One run of many calls from a thread pool."""

    name: str
    tasks_requested: int
    tasks_run: int
    skipped: int  # not started before max_seconds
    max_workers: int
    successes: int
    failures: int
    errors_by_type: dict[str, int]
    success_rate: float  # 0..1 of the tasks run
    wall_seconds: float
    tasks_per_s: float  # tasks run (failed ones included) per wall second
    latency: TimingSummary | None  # successful calls only
    stopped_early: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format_table(self) -> str:
        out = [
            f"concurrent benchmark {self.name}: {self.tasks_run}/{self.tasks_requested} tasks "
            f"on {self.max_workers} threads in {self.wall_seconds:.3f} s = "
            f"{self.tasks_per_s:,.1f} tasks/s, success {self.success_rate:.1%}"
        ]
        if self.stopped_early:
            out.append(f"STOPPED: {self.skipped} tasks not started before max_seconds")
        out.append(self.latency.format_line() if self.latency else "no successful task")
        out += [f"  {count:>8} × {kind}" for kind, count in sorted(self.errors_by_type.items())]
        return "\n".join(out)


def benchmark_function(
    func: Callable[..., Any],
    iterations: int,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    warmup: int = 0,
    max_seconds: float,
    limits: Limits | None = None,
    name: str | None = None,
) -> BenchmarkStats:
    """Call ``func(*args, **kwargs)`` ``iterations`` times after ``warmup`` untimed calls."""
    iterations = _check_count("iterations", iterations, limits)
    if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup < 0:
        raise InvalidInput(f"warmup must be 0 or more, got {warmup!r}")
    if warmup != 0:
        warmup = _check_count("warmup", warmup, limits)
    _check_seconds(max_seconds, limits)
    kwargs = dict(kwargs or {})
    deadline = time.perf_counter() + max_seconds
    for _ in range(warmup):
        if time.perf_counter() >= deadline:
            break
        with contextlib.suppress(Exception):  # warm-up failures show again in the timed run
            func(*args, **kwargs)
    times: list[float] = []
    errors: Counter[str] = Counter()
    run, stopped = 0, False
    started = time.perf_counter()
    for _ in range(iterations):
        t0 = time.perf_counter()
        if t0 >= deadline:
            stopped = True
            break
        try:
            func(*args, **kwargs)
        except Exception as exc:  # counted: a failing iteration never aborts the run
            errors[qualified_name(type(exc))] += 1
        else:
            times.append(time.perf_counter() - t0)
        run += 1
    return BenchmarkStats(
        name=name or qualified_name(func),
        iterations_requested=iterations,
        iterations_run=run,
        warmup=warmup,
        successes=len(times),
        failures=run - len(times),
        errors_by_type=dict(errors),
        success_rate=len(times) / run if run else 0.0,
        total_seconds=time.perf_counter() - started,
        timings=TimingSummary.of(times),
        stopped_early=stopped,
        max_seconds=float(max_seconds),
    )


def benchmark_concurrent(
    func: Callable[..., Any],
    tasks: int,
    max_workers: int,
    *,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    max_seconds: float,
    limits: Limits | None = None,
    name: str | None = None,
) -> ConcurrencyStats:
    """Run ``tasks`` calls of ``func`` on ``max_workers`` threads; throughput and latency."""
    tasks = _check_count("tasks", tasks, limits)
    max_workers = int(
        require_within(
            "max_workers",
            max_workers,
            limits.max_concurrent if limits else None,
            "profiling.max_concurrent",
        )
    )
    _check_seconds(max_seconds, limits)
    kwargs = dict(kwargs or {})
    lock = threading.Lock()
    times: list[float] = []
    errors: Counter[str] = Counter()
    skipped = 0
    started = time.perf_counter()
    deadline = started + max_seconds

    def one() -> None:
        nonlocal skipped
        t0 = time.perf_counter()
        if t0 >= deadline:
            with lock:
                skipped += 1
            return
        try:
            func(*args, **kwargs)
        except Exception as exc:  # counted, never aborts the run
            with lock:
                errors[qualified_name(type(exc))] += 1
        else:
            elapsed = time.perf_counter() - t0
            with lock:
                times.append(elapsed)

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="lewis-bench") as pool:
        for _ in range(tasks):
            pool.submit(one)
    wall = time.perf_counter() - started
    run = tasks - skipped
    return ConcurrencyStats(
        name=name or qualified_name(func),
        tasks_requested=tasks,
        tasks_run=run,
        skipped=skipped,
        max_workers=max_workers,
        successes=len(times),
        failures=run - len(times),
        errors_by_type=dict(errors),
        success_rate=len(times) / run if run else 0.0,
        wall_seconds=wall,
        tasks_per_s=run / wall if wall > 0 else 0.0,
        latency=TimingSummary.of(times),
        stopped_early=skipped > 0,
    )


def _check_count(what: str, value: int, limits: Limits | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    return int(
        require_within(
            what, value, limits.max_iterations if limits else None, "profiling.max_iterations"
        )
    )


def _check_seconds(seconds: float, limits: Limits | None) -> None:
    require_within(
        "max_seconds", seconds, limits.max_seconds if limits else None, "profiling.max_seconds"
    )


@dataclass(frozen=True)
class MachineInfo:
    """Where a benchmark ran: stored with every run so figures are compared like with like."""

    hostname: str
    cpu_model: str
    cores_logical: int
    cores_physical: int | None
    memory_total_bytes: int
    os: str
    python: str
    packages: dict[str, str] = field(default_factory=dict)  # installed ones only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info(packages: Sequence[str] = DEFAULT_PACKAGES) -> MachineInfo:
    """This machine's CPU, memory, OS, Python and the versions of ``packages`` that are installed."""
    versions = {}
    for dist in packages:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return MachineInfo(
        hostname=socket.gethostname(),
        cpu_model=_cpu_model(),
        cores_logical=psutil.cpu_count() or os.cpu_count() or 1,
        cores_physical=psutil.cpu_count(logical=False),
        memory_total_bytes=psutil.virtual_memory().total,
        os=platform.platform(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        packages=versions,
    )


# the settings sections that shape benchmark figures, stored with every run
SHAPING_SETTINGS = ("profiling", "workers", "tasks", "performance")


def benchmark_run_row(
    *,
    suite: str,
    name: str,
    queue: str | None,
    metrics: dict[str, Any],
    settings: Mapping[str, Any],
    **options: Any,
) -> dict[str, Any]:
    """A benchmark run's stored fields: its figures, this machine and its package versions, and
    the settings that shape the figures (from ``settings``, already redacted) plus the run's
    own ``options``."""
    machine = machine_info().to_dict()
    versions = machine.pop("packages")
    return {
        "suite": suite,
        "name": name,
        "queue": queue,
        "metrics": metrics,
        "machine": machine,
        "versions": versions,
        "settings": {
            **{k: settings[k] for k in SHAPING_SETTINGS},
            "broker": {k: settings["broker"][k] for k in ("pool_limit", "max_connections")},
            "run": options,
        },
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


__all__ = [
    "DEFAULT_PACKAGES",
    "BenchmarkStats",
    "ConcurrencyStats",
    "MachineInfo",
    "TimingSummary",
    "SHAPING_SETTINGS",
    "benchmark_concurrent",
    "benchmark_function",
    "benchmark_run_row",
    "machine_info",
    "median_of_runs",
    "percentile",
    "ratio",
]
