"""Profile, diagnose and benchmark tasks through a real (embedded) worker and real Redis."""

from __future__ import annotations

import os
import pstats
from pathlib import Path
from typing import Any

import pytest

from lewis_tasks.errors import InvalidInput
from lewis_tasks.producer.clusterbench import benchmark_cluster
from lewis_tasks.producer.profile import submit_benchmark, submit_diagnose, submit_profile
from lewis_tasks.report.runs import record_benchmark_run
from tests.support import profiletargets

TIMEOUT = 60


def _stored(model: Any, run_id: str) -> Any:
    from lewis_tasks.infra.database import get_engine
    from lewis_tasks.storage.db import session_scope
    from lewis_tasks.storage.runs import get_run

    with session_scope(get_engine()) as session:
        return get_run(session, model, run_id)


# ---------------------------------------------------------------- profile


def test_profile_of_a_registered_workload_names_its_hot_function(celery_worker: Any) -> None:
    from lewis_tasks.storage.models import ProfileRunRow

    # Given the histogram-merge workload, when it is profiled in a worker
    handle = submit_profile(
        "workload.merge_histograms", kwargs={"parts": 4, "values_per_part": 5000}, top_n=15
    )
    report = handle.report(timeout=TIMEOUT)
    # Then the rows name the function its time goes to: recording 20,000 latencies
    assert report.ok and report.name == "workload.merge_histograms"
    record = next(r for r in report.by_cumulative + report.by_tottime if r.function == "record")
    assert record.file.endswith("domain/histogram.py") and record.ncalls == 20_000
    assert any(r.function == "merge_histograms" for r in report.by_cumulative)
    assert report.memory is not None and report.memory.peak_bytes > 0
    assert report.wall_seconds > 0 and report.total_calls > 20_000
    # and the run is stored under its task id
    row = _stored(ProfileRunRow, handle.id)
    assert row.status == "ok" and row.task_name == "workload.merge_histograms"
    assert row.result["by_cumulative"] and row.pstats_path is None


@pytest.mark.parametrize(
    "name", ["os.system", "lewis_tasks.domain.workloads.spin", "lewis.control.cleanup"]
)
def test_an_unregistered_name_is_refused_never_imported(celery_worker: Any, name: str) -> None:
    # A dotted path to a real function, or a real task that is not registered, is still refused
    with pytest.raises(InvalidInput, match=f"unknown profilable task '{name}'.*workload.spin"):
        submit_profile(name, ["echo owned"]).wait(timeout=TIMEOUT)


def test_a_raising_task_still_returns_its_profile_with_the_exception(celery_worker: Any) -> None:
    from lewis_tasks.storage.models import ProfileRunRow

    # Given io_sleep asked to wait a negative time (it raises InvalidInput inside)
    handle = submit_profile("lewis.bench.io_sleep", [-1])
    result = handle.wait(timeout=TIMEOUT)
    # Then the profile task succeeded, and its report records the target's exception
    assert handle.state == "SUCCESS"
    assert result["status"] == "raised" and result["ok"] is False
    assert result["exception"]["type"] == "lewis_tasks.errors.InvalidInput"
    assert "seconds must be a number" in result["exception"]["message"]
    assert "io_sleep" in result["exception"]["traceback"]
    # the run up to the raise is profiled (io_sleep's coroutine runs on a private loop in the
    # profiled thread, so its frames sit below the loop's own in the cumulative ranking)
    assert result["by_cumulative"] and result["by_cumulative"][0]["function"] == "run_task_inline"
    assert _stored(ProfileRunRow, handle.id).status == "raised"


def test_registered_defaults_fill_missing_arguments(celery_worker: Any) -> None:
    # io_sleep needs its seconds; a request without args runs it with the registered default
    result = submit_profile("lewis.bench.io_sleep", trace_memory=False).wait(timeout=TIMEOUT)
    assert result["status"] == "ok" and result["memory"] is None


@pytest.mark.parametrize(
    ("options", "bound"),
    [
        ({"top_n": 10_000}, "profiling.top_n"),
        ({"max_seconds": 10_000}, "profiling.max_seconds"),
        ({"max_seconds": 50}, "tasks.soft_time_limit"),  # the test stack's soft limit is 30 s
    ],
)
def test_a_profile_over_a_bound_is_refused_with_the_bound_named(
    celery_worker: Any, options: dict[str, Any], bound: str
) -> None:
    with pytest.raises(InvalidInput, match=bound.replace(".", r"\.")):
        submit_profile("workload.spin", **options).wait(timeout=TIMEOUT)


def test_pstats_is_saved_under_the_home_and_returned(
    celery_worker: Any, lewis_settings: Any, tmp_path: Path
) -> None:
    handle = submit_profile("workload.spin", kwargs={"loops": 50_000}, return_pstats=True)
    copy = handle.save_pstats(tmp_path / "spin.pstats")
    result = handle.wait(timeout=TIMEOUT)
    on_worker = Path(result["pstats_path"])
    assert on_worker == lewis_settings.home / "profiles" / f"{handle.id}.pstats"
    for path in (copy, on_worker):  # both open with the standard tool
        functions = {func for (_file, _line, func) in pstats.Stats(str(path)).stats}  # type: ignore[attr-defined]
        assert "spin" in functions


# ---------------------------------------------------------------- diagnose


def test_diagnose_reports_the_live_worker_and_an_aggregate(celery_worker: Any) -> None:
    from lewis_tasks.storage.models import DiagnosisRow

    handle = submit_diagnose()
    report = handle.report(timeout=TIMEOUT)
    # One live worker, one report, rolled up
    assert [w.worker for w in report.workers] == [celery_worker.hostname]
    assert report.missing == () and report.totals["workers"] == report.totals["replied"] == 1
    worker = report.workers[0]
    # pool figures from the worker's own state: 4 threads, and this diagnose occupies one
    assert worker.pool_size == 4 and worker.pool_busy is not None and worker.pool_busy >= 1
    assert worker.snapshot.processes[0].pid == os.getpid()  # the embedded worker's process
    assert worker.snapshot.processes[0].rss_bytes > 0 and worker.snapshot.memory.total_bytes > 0
    assert report.totals["pool_rss_bytes"] == worker.snapshot.pool_rss_bytes
    stored = _stored(DiagnosisRow, handle.id)
    assert stored.worker is None and stored.report["totals"]["replied"] == 1
    assert "cluster: 1/1 workers replied" in report.format_table()


def test_diagnose_of_one_named_worker_and_of_an_unknown_one(celery_worker: Any) -> None:
    report = submit_diagnose(celery_worker.hostname).report(timeout=TIMEOUT)
    assert [w.worker for w in report.workers] == [celery_worker.hostname]
    with pytest.raises(InvalidInput, match="no live worker named 'ghost@nowhere'"):
        submit_diagnose("ghost@nowhere").wait(timeout=TIMEOUT)


# ---------------------------------------------------------------- benchmarks


def test_a_function_benchmark_is_stored_with_machine_versions_and_settings(
    celery_worker: Any,
) -> None:
    from lewis_tasks.storage.models import BenchmarkRunRow

    handle = submit_benchmark(
        "workload.merge_scan_chunks",
        iterations=5,
        warmup=1,
        kwargs={"chunks": 2, "ports_per_chunk": 1000},
    )
    stats = handle.report(timeout=TIMEOUT)
    assert stats.iterations_run == 5 and stats.success_rate == 1.0 and stats.timings is not None
    row = _stored(BenchmarkRunRow, handle.id)
    assert (row.suite, row.name, row.queue) == ("function", "workload.merge_scan_chunks", "cpu")
    assert row.metrics["throughput_per_s"] > 0 and row.metrics["p99_ms"] >= row.metrics["p50_ms"]
    assert row.machine["cores_logical"] >= 1 and "celery" in row.versions
    assert row.settings["profiling"]["max_iterations"] > 0
    assert row.settings["run"]["iterations"] == 5


def test_a_failing_target_counts_in_the_success_rate(celery_worker: Any) -> None:
    profiletargets.reset()
    # Given a target that fails every second call: the run goes on and counts the failures
    serial = submit_benchmark("test.flaky", iterations=10).report(timeout=TIMEOUT)
    assert (serial.iterations_run, serial.successes, serial.failures) == (10, 5, 5)
    assert serial.success_rate == 0.5 and serial.errors_by_type == {"ValueError": 5}
    profiletargets.reset()
    threaded = submit_benchmark("test.flaky", iterations=20, concurrency=4).report(timeout=TIMEOUT)
    assert threaded.tasks_run == 20 and threaded.success_rate == 0.5  # type: ignore[union-attr]
    # and a target that fails every time gives a 0 % run, not a failed task
    never = submit_benchmark("lewis.bench.io_sleep", iterations=3, args=[-1]).report(
        timeout=TIMEOUT
    )
    assert never.success_rate == 0.0 and never.timings is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("options", "bound"),
    [
        ({"iterations": 10**9}, "profiling.max_iterations"),
        ({"iterations": 2, "concurrency": 10**6}, "profiling.max_concurrent"),
        ({"max_seconds": 10_000}, "profiling.max_seconds"),
    ],
)
def test_a_benchmark_over_a_bound_is_refused_with_the_bound_named(
    celery_worker: Any, options: dict[str, Any], bound: str
) -> None:
    with pytest.raises(InvalidInput, match=bound.replace(".", r"\.")):
        submit_benchmark("workload.spin", **options).wait(timeout=TIMEOUT)


def test_cluster_benchmark_measures_each_queue_through_the_broker(celery_worker: Any) -> None:
    from lewis_tasks.storage.models import BenchmarkRunRow

    result = benchmark_cluster(
        ["latency", "throughput"],
        queues=("io", "cpu"),
        samples=10,
        warmup=2,
        tasks=60,
        record=record_benchmark_run,
    )
    assert [x.queue for x in result.latency] == ["io", "cpu"]
    assert all(
        x.samples == 10 and x.failures == 0 and x.p99_ms >= x.p50_ms > 0  # type: ignore[operator]
        for x in result.latency
    )
    assert [(x.queue, x.done, x.failures) for x in result.throughput] == [
        ("io", 60, 0),
        ("cpu", 60, 0),
    ]
    assert all(x.throughput_per_s > 0 for x in result.throughput)
    assert len(result.run_ids) == 2 and not result.skipped
    rows = [_stored(BenchmarkRunRow, i) for i in result.run_ids]
    assert [(r.suite, r.name, r.queue) for r in rows] == [
        ("cluster", "noop", "io"),
        ("cluster", "noop", "cpu"),
    ]
    for row, lat, thr in zip(rows, result.latency, result.throughput, strict=True):
        assert row.metrics["p50_ms"] == lat.p50_ms and row.metrics["latency_samples"] == 10
        assert row.metrics["throughput_per_s"] == thr.throughput_per_s
        assert row.metrics["throughput_done"] == 60
        assert row.settings["run"]["samples"] == 10 and "celery" in row.versions


def test_cluster_benchmark_skips_a_queue_nobody_consumes(lewis_settings: Any) -> None:
    # No worker runs in this test: every queue is named as skipped, nothing waits or is stored
    result = benchmark_cluster(queues=("cpu",), samples=5, tasks=5, record=record_benchmark_run)
    assert result.latency == () and result.throughput == () and result.stack == ()
    assert result.run_ids == ()
    assert result.skipped == {
        "latency:cpu": "no live worker consumes this queue",
        "throughput:cpu": "no live worker consumes this queue",
        "scan": "no live worker consumes io and cpu",
        "http": "no live worker consumes io and cpu",
    }


def test_stack_benchmarks_scan_ports_and_http_requests_per_second(celery_worker: Any) -> None:
    from lewis_tasks.storage.models import BenchmarkRunRow

    # A loopback scan and a one-second load test of a local server, through the producer API
    result = benchmark_cluster(
        ["scan", "http"],
        scan_ports="1-3000",
        http_concurrency=8,
        http_duration=1.0,
        record=record_benchmark_run,
    )
    assert not result.skipped, result.skipped
    scan, http = result.stack
    assert scan.name == "scan" and scan.detail["ports"] == 3000 and scan.rate_per_s > 0
    assert http.name == "http" and http.detail["requests"] > 0 and http.detail["errors"] == 0
    assert http.rate_per_s > 0 and http.detail["p99_ms"] >= http.detail["p50_ms"] > 0
    rows = [_stored(BenchmarkRunRow, i) for i in result.run_ids]
    assert [(r.name, r.queue) for r in rows] == [("scan", "io"), ("http", "io")]
    assert rows[0].metrics["throughput_per_s"] == scan.rate_per_s
    assert "ports/s" in result.format_table() and "req/s" in result.format_table()


def test_cluster_benchmark_bounds(lewis_settings: Any) -> None:
    with pytest.raises(InvalidInput, match=r"profiling\.max_iterations"):
        benchmark_cluster(samples=10**9)
    with pytest.raises(InvalidInput, match="unknown cluster suite nmap"):
        benchmark_cluster(["nmap"])


def test_back_to_back_broadcasts_each_see_the_live_worker(celery_worker: Any) -> None:
    from lewis_tasks.infra.celery_app import app
    from lewis_tasks.producer.clusterbench import queue_consumers

    # Every lookup ends by timeout (the number of workers is not known up front); on a shared
    # connection every second one used to come back empty
    for _ in range(3):
        assert queue_consumers(app, 0.5)["cpu"] == [celery_worker.hostname]
