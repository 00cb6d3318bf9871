"""Benchmark statistics: exact figures on deterministic targets, failures counted, bounds refused."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import random
import threading
import time

import numpy as np
import pytest

from lewis_tasks.domain.benchstats import (
    TimingSummary,
    benchmark_concurrent,
    benchmark_function,
    machine_info,
    median_of_runs,
    percentile,
    ratio,
)
from lewis_tasks.domain.callables import Limits
from lewis_tasks.errors import InvalidInput

LIMITS = Limits(max_seconds=5.0, top_n=10, max_iterations=500, max_concurrent=8)


class EveryNthFails:
    """A target whose n-th, 2n-th, … calls raise KeyError; thread-safe call counter."""

    def __init__(self, n: int) -> None:
        self.n, self.calls, self._lock = n, 0, threading.Lock()

    def __call__(self, *args: object, **kwargs: object) -> int:
        with self._lock:
            self.calls += 1
            call = self.calls
        if call % self.n == 0:
            raise KeyError(call)
        return call


def test_percentile_matches_numpy_linear() -> None:
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50) == 5.5
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 95) == pytest.approx(9.55)
    assert percentile([7.0], 99) == 7.0
    values = [random.Random(3).expovariate(1.0) for _ in range(1001)]
    for q in (0, 1, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(InvalidInput):
        percentile([], 50)
    with pytest.raises(InvalidInput):
        percentile([1.0], 101)


def test_summary_helpers() -> None:
    summary = TimingSummary.of([0.1, 0.2, 0.3, 0.4])
    assert summary is not None
    assert (summary.count, summary.min_s, summary.max_s) == (4, 0.1, 0.4)
    assert summary.mean_s == pytest.approx(0.25) and summary.median_s == pytest.approx(0.25)
    assert summary.stdev_s == pytest.approx(0.129099, rel=1e-4)
    assert TimingSummary.of([]) is None
    assert TimingSummary.of([0.5]).stdev_s == 0.0  # type: ignore[union-attr]
    assert median_of_runs([3.0, 100.0, 2.0]) == 3.0
    assert ratio(3.0, 2.0) == 1.5 and ratio(1.0, 0.0) is None
    with pytest.raises(InvalidInput):
        median_of_runs([])


def test_failures_are_counted_and_never_abort_the_run() -> None:
    target = EveryNthFails(4)
    stats = benchmark_function(
        target,
        100,
        args=(1,),
        kwargs={"k": 2},
        warmup=3,
        max_seconds=5,
        limits=LIMITS,
        name="every-4th",
    )

    assert target.calls == 103  # 3 warm-up calls, then all 100, failures included
    # calls 4..103 are timed; every 4th of all calls fails: 4, 8, … 100
    assert (stats.iterations_run, stats.successes, stats.failures) == (100, 75, 25)
    assert stats.errors_by_type == {"KeyError": 25}
    assert stats.success_rate == pytest.approx(0.75)
    assert stats.timings is not None and stats.timings.count == 75
    t = stats.timings
    assert t.min_s <= t.median_s <= t.p95_s <= t.p99_s <= t.max_s
    assert not stats.stopped_early and stats.name == "every-4th"
    assert json.loads(json.dumps(stats.to_dict()))["errors_by_type"] == {"KeyError": 25}
    assert "25 × KeyError" in stats.format_table()


def test_all_failing_gives_no_timings() -> None:
    stats = benchmark_function(EveryNthFails(1), 10, max_seconds=5)
    assert (stats.successes, stats.failures, stats.success_rate) == (0, 10, 0.0)
    assert stats.timings is None and "no successful iteration" in stats.format_table()


def test_timings_measure_the_target() -> None:
    stats = benchmark_function(time.sleep, 5, args=(0.02,), max_seconds=5)
    assert stats.timings is not None and stats.timings.min_s >= 0.02  # sleep never returns early


def test_a_run_reaching_max_seconds_stops_between_iterations() -> None:
    stats = benchmark_function(time.sleep, 400, args=(0.01,), max_seconds=0.2, limits=LIMITS)
    assert stats.stopped_early
    assert 1 <= stats.iterations_run < 400 and stats.failures == 0
    assert "STOPPED" in stats.format_table()


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"iterations": 501}, r"iterations=501 is over the bound profiling\.max_iterations=500"),
        ({"iterations": 10, "max_seconds": 6}, r"profiling\.max_seconds=5\.0"),
        (
            {"iterations": 10, "warmup": 501},
            r"warmup=501 is over the bound profiling\.max_iterations",
        ),
        ({"iterations": 0}, "iterations must be greater than 0"),
        ({"iterations": 2.5}, "whole number"),
        ({"iterations": True}, "whole number"),
        ({"iterations": 10, "warmup": -1}, "warmup must be 0 or more"),
    ],
)
def test_function_bounds_refused_by_name(kwargs: dict, named: str) -> None:
    target = EveryNthFails(10)
    kwargs.setdefault("max_seconds", 1)
    with pytest.raises(InvalidInput, match=named):
        benchmark_function(target, limits=LIMITS, **kwargs)
    assert target.calls == 0


def test_concurrent_counts_failures_and_uses_the_workers() -> None:
    barrier = threading.Barrier(4, timeout=10)
    arrivals = iter(range(40))  # next() on a range iterator is atomic under the GIL
    target = EveryNthFails(2)

    def call() -> int:
        if (
            next(arrivals) < 4
        ):  # the first four calls wait for each other: 4 threads must run at once
            barrier.wait()
        return target()

    stats = benchmark_concurrent(call, 40, 4, max_seconds=5, limits=LIMITS)

    assert (stats.tasks_run, stats.successes, stats.failures, stats.skipped) == (40, 20, 20, 0)
    assert stats.errors_by_type == {"KeyError": 20} and stats.success_rate == 0.5
    assert stats.tasks_per_s == pytest.approx(40 / stats.wall_seconds)
    assert stats.latency is not None and stats.latency.count == 20
    assert not stats.stopped_early and "BrokenBarrierError" not in stats.errors_by_type
    assert json.loads(json.dumps(stats.to_dict()))["max_workers"] == 4


def test_concurrent_stops_starting_tasks_after_max_seconds() -> None:
    stats = benchmark_concurrent(time.sleep, 200, 2, args=(0.02,), max_seconds=0.2)
    assert stats.stopped_early and stats.skipped > 0
    assert stats.tasks_run + stats.skipped == 200 and stats.failures == 0


def test_concurrent_bounds_refused_by_name() -> None:
    with pytest.raises(
        InvalidInput, match=r"max_workers=9 is over the bound profiling\.max_concurrent=8"
    ):
        benchmark_concurrent(time.sleep, 10, 9, args=(0,), max_seconds=1, limits=LIMITS)
    with pytest.raises(
        InvalidInput, match=r"tasks=501 is over the bound profiling\.max_iterations"
    ):
        benchmark_concurrent(time.sleep, 501, 2, args=(0,), max_seconds=1, limits=LIMITS)


def test_machine_info_names_this_machine_and_installed_packages() -> None:
    info = machine_info(("celery", "redis", "no-such-package-for-lewis"))
    assert info.cores_logical >= 1 and info.memory_total_bytes > 0 and info.cpu_model
    assert info.python.endswith(platform.python_version())
    assert info.packages == {
        "celery": importlib.metadata.version("celery"),
        "redis": importlib.metadata.version("redis"),
    }
    assert json.loads(json.dumps(info.to_dict()))["packages"]["celery"]
