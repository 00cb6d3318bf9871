"""Submitting profiles, diagnoses and function benchmarks; handles that give typed reports back.

Each ``submit_*`` sends one cpu task (see :mod:`lewis_tasks.tasks.profile`) and returns a
handle: ``.wait()`` gives the JSON result as the task returned it, ``.report()`` the domain
object it describes (a :class:`ProfileReport`, :class:`ClusterDiagnosis` or benchmark stats),
whose ``format_table()`` prints it. Names are checked by the worker against its registry.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from celery import Celery
from celery.exceptions import TimeoutError as ResultTimeout

from ..domain.benchstats import BenchmarkStats, ConcurrencyStats, TimingSummary
from ..domain.diagnostics import ClusterDiagnosis, Recommendation, WorkerDiagnosis
from ..domain.memsites import AllocationSite, MemoryProfile
from ..domain.profiler import ExceptionInfo, ProfileReport, ProfileRow
from ..errors import InvalidInput, LewisError
from .base import FALLBACK_POLL, TaskHandle, submit
from .handle import JobHandle

PROFILE_TASK = "lewis.profile.run"
DIAGNOSE_TASK = "lewis.profile.diagnose"
BENCHMARK_TASK = "lewis.bench.run"


@dataclass
class ReportHandle(TaskHandle, JobHandle[str, dict[str, Any]]):
    """A submitted one-task job (a profile, diagnosis or benchmark) as a :class:`JobHandle`:
    its progress is the task's state, ``wait()`` gives its JSON result, ``report()`` the
    domain object that result describes."""

    what: ClassVar[str] = "task"

    def progress(self) -> str:
        return self.state

    def wait(self, timeout: float | None = None, interval: float = FALLBACK_POLL) -> dict[str, Any]:
        try:
            return dict(super().wait(timeout, interval))
        except ResultTimeout:
            raise self.timed_out(timeout) from None

    def result(self) -> dict[str, Any] | None:
        """The JSON result if the task has succeeded, else None."""
        done = self.async_result
        return dict(done.result) if done.successful() else None

    def cancel(self) -> bool:
        """Revoke the task if it has not ended (a running one finishes); False if it had."""
        if self.ready():
            return False
        self.async_result.revoke()
        return True


@dataclass
class ProfileHandle(ReportHandle):
    """A submitted profile."""

    def report(self, timeout: float | None = None) -> ProfileReport:
        """The profile as a :class:`ProfileReport` (its exception, if any, is inside it)."""
        return profile_report_from_dict(self.wait(timeout))

    def save_pstats(self, path: str | os.PathLike[str], timeout: float | None = None) -> Path:
        """Write the run's .pstats file to ``path`` here (submit with ``return_pstats=True``)."""
        result = self.wait(timeout)
        data = result.get("pstats_b64")
        if not data:
            raise LewisError(
                result.get("pstats_note")
                or "this profile carries no .pstats data: submit it with return_pstats=True"
            )
        target = Path(path)
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        partial.write_bytes(base64.b64decode(data))
        os.replace(partial, target)
        return target


@dataclass
class DiagnoseHandle(ReportHandle):
    """A submitted cluster diagnosis."""

    def report(self, timeout: float | None = None) -> ClusterDiagnosis:
        return cluster_diagnosis_from_dict(self.wait(timeout))


@dataclass
class BenchmarkHandle(ReportHandle):
    """A submitted function benchmark."""

    def report(self, timeout: float | None = None) -> BenchmarkStats | ConcurrencyStats:
        result = self.wait(timeout)
        return benchmark_stats_from_dict(result["stats"], concurrent=result["kind"] == "concurrent")


def submit_profile(
    task: str,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    *,
    top_n: int | None = None,
    trace_memory: bool = True,
    max_seconds: float | None = None,
    save_pstats: bool = False,
    return_pstats: bool = False,
    app: Celery | None = None,
) -> ProfileHandle:
    """Profile registered task/callable ``task`` once in a cpu worker.

    ``save_pstats`` keeps a .pstats file under the worker's stack home (``profiles/``);
    ``return_pstats`` also sends it back in the result (see :meth:`ProfileHandle.save_pstats`).
    """
    options = {
        "name": task,
        "args": list(args) if args is not None else None,
        "kwargs": dict(kwargs) if kwargs is not None else None,
        "top_n": top_n,
        "trace_memory": trace_memory,
        "max_seconds": max_seconds,
        "save_pstats": save_pstats,
        "return_pstats": return_pstats,
    }
    handle = submit(PROFILE_TASK, kwargs=options, app=app)
    return ProfileHandle(handle.id, handle.name, handle.app)


def submit_diagnose(
    worker: str | None = None, *, interval: float = 0.2, app: Celery | None = None
) -> DiagnoseHandle:
    """Diagnose every live worker (or the one named ``worker``): one aggregated report."""
    handle = submit(DIAGNOSE_TASK, kwargs={"worker": worker, "interval": interval}, app=app)
    return DiagnoseHandle(handle.id, handle.name, handle.app)


def submit_benchmark(
    target: str,
    *,
    iterations: int | None = None,
    warmup: int = 0,
    concurrency: int | None = None,
    args: Sequence[Any] | None = None,
    kwargs: Mapping[str, Any] | None = None,
    max_seconds: float | None = None,
    app: Celery | None = None,
) -> BenchmarkHandle:
    """Benchmark registered callable ``target`` in a cpu worker: serially, or on
    ``concurrency`` threads (then ``iterations`` is the number of calls). Stored when done.

    Cluster benchmarks (round trips and throughput through the broker) are
    :func:`lewis_tasks.producer.clusterbench.benchmark_cluster`: they run here, not in a task.
    """
    options = {
        "target": target,
        "iterations": iterations,
        "warmup": warmup,
        "concurrency": concurrency,
        "args": list(args) if args is not None else None,
        "kwargs": dict(kwargs) if kwargs is not None else None,
        "max_seconds": max_seconds,
    }
    handle = submit(BENCHMARK_TASK, kwargs=options, app=app)
    return BenchmarkHandle(handle.id, handle.name, handle.app)


# ---------------------------------------------------------------- results → domain objects


def profile_report_from_dict(data: Mapping[str, Any]) -> ProfileReport:
    """The :class:`ProfileReport` a ``lewis.profile.run`` result (``to_dict()``) describes."""
    try:
        memory = data.get("memory")
        exc = data.get("exception")
        return ProfileReport(
            name=str(data["name"]),
            started_at=float(data["started_at"]),
            wall_seconds=float(data["wall_seconds"]),
            cpu_seconds=float(data["cpu_seconds"]),
            thread_cpu_seconds=float(data["thread_cpu_seconds"]),
            total_calls=int(data["total_calls"]),
            primitive_calls=int(data["primitive_calls"]),
            by_cumulative=tuple(_build(ProfileRow, r) for r in data["by_cumulative"]),
            by_tottime=tuple(_build(ProfileRow, r) for r in data["by_tottime"]),
            memory=_memory(memory) if memory else None,
            exception=_build(ExceptionInfo, exc) if exc else None,
            timed_out=bool(data["timed_out"]),
            max_seconds=float(data["max_seconds"]),
            pstats_path=data.get("pstats_path"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a profile result: {exc!r}") from exc


def _memory(data: Mapping[str, Any]) -> MemoryProfile:
    return MemoryProfile(
        retained_bytes=int(data["retained_bytes"]),
        peak_bytes=int(data["peak_bytes"]),
        current_sites=tuple(_build(AllocationSite, s) for s in data["current_sites"]),
        peak_sites=tuple(_build(AllocationSite, s) for s in data["peak_sites"]),
        peak_sites_at_bytes=int(data["peak_sites_at_bytes"]),
        sample_interval=float(data["sample_interval"]),
    )


def cluster_diagnosis_from_dict(data: Mapping[str, Any]) -> ClusterDiagnosis:
    """The :class:`ClusterDiagnosis` a ``lewis.profile.diagnose`` result describes."""
    try:
        return ClusterDiagnosis(
            taken_at=float(data["taken_at"]),
            workers=tuple(WorkerDiagnosis.from_dict(w) for w in data["workers"]),
            missing=tuple(str(m) for m in data["missing"]),
            cluster_findings=tuple(Recommendation.from_dict(r) for r in data["cluster_findings"]),
            totals=dict(data["totals"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a diagnosis result: {exc!r}") from exc


def benchmark_stats_from_dict(
    data: Mapping[str, Any], *, concurrent: bool
) -> BenchmarkStats | ConcurrencyStats:
    """The stats object of a ``lewis.bench.run`` result's ``stats``."""
    cls: type[BenchmarkStats] | type[ConcurrencyStats] = (
        ConcurrencyStats if concurrent else BenchmarkStats
    )
    key = "latency" if concurrent else "timings"
    try:
        values = {f.name: data[f.name] for f in fields(cls)}
        values[key] = _build(TimingSummary, data[key]) if data[key] else None
        return cls(**values)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"not a benchmark result: {exc!r}") from exc


def _build(cls: Any, data: Mapping[str, Any]) -> Any:
    """A frozen dataclass from its ``to_dict()`` (extra keys such as ``location`` dropped)."""
    return cls(**{f.name: data[f.name] for f in fields(cls)})


__all__ = [
    "BenchmarkHandle",
    "DiagnoseHandle",
    "ProfileHandle",
    "ReportHandle",
    "benchmark_stats_from_dict",
    "cluster_diagnosis_from_dict",
    "profile_report_from_dict",
    "submit_benchmark",
    "submit_diagnose",
    "submit_profile",
]
