"""Benchmark runs in the database: record one with where and how it ran, load them for the report.

Every run — a function benchmark in a worker, a cluster benchmark from the producer — is stored
through :func:`record_benchmark_run`, so each carries the same machine description, package
versions and the settings that shape its figures; :func:`load_benchmark_runs` gives them back
in the plain-dict shape :func:`~lewis_tasks.report.bench_report.render_report` draws.
"""

from __future__ import annotations

from typing import Any

from ..domain.benchstats import machine_info
from ..infra.config import Settings, get_settings

_SHAPING = ("profiling", "workers", "tasks", "performance")


def benchmark_settings(settings: Settings, **extra: Any) -> dict[str, Any]:
    """The settings that shape benchmark figures (secrets masked), plus the run's own options."""
    shown = settings.redacted()
    return {
        **{k: shown[k] for k in _SHAPING},
        "broker": {k: shown["broker"][k] for k in ("pool_limit", "max_connections")},
        "run": extra,
    }


def record_benchmark_run(
    run_id: str,
    *,
    suite: str,
    name: str,
    queue: str | None,
    metrics: dict[str, Any],
    settings: Settings | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Store one run (an upsert keyed by ``run_id``) with this machine and versions; its dict."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.runs import save_benchmark_run

    settings = settings or get_settings()
    machine = machine_info().to_dict()
    versions = machine.pop("packages")
    row = {
        "suite": suite,
        "name": name,
        "queue": queue,
        "metrics": metrics,
        "machine": machine,
        "versions": versions,
        "settings": benchmark_settings(settings, **options),
    }
    with session_scope(get_engine()) as session:
        stored = save_benchmark_run(session, run_id, **row)
        created = stored.created_at
    return {"id": run_id, "created_at": created.isoformat(), **row}


def load_benchmark_runs(*, limit: int = 500, suite: str | None = None) -> list[dict[str, Any]]:
    """The newest ``limit`` stored runs (of ``suite``, if given), oldest first, as report dicts."""
    from ..infra.database import get_engine
    from ..storage.db import session_scope
    from ..storage.models import BenchmarkRunRow
    from ..storage.runs import list_runs

    where = {"suite": suite} if suite else {}
    with session_scope(get_engine()) as session:
        rows = list_runs(session, BenchmarkRunRow, limit=limit, **where)
        runs = [
            {
                "id": r.id,
                "created_at": r.created_at,
                "suite": r.suite,
                "name": r.name,
                "queue": r.queue,
                "metrics": r.metrics or {},
                "machine": r.machine or {},
                "versions": r.versions or {},
                "settings": r.settings or {},
            }
            for r in rows
        ]
    return runs[::-1]


__all__ = ["benchmark_settings", "load_benchmark_runs", "record_benchmark_run"]
