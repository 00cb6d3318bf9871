"""Benchmark runs in the database: record one with where and how it ran, load them for the report.

Every run — a function benchmark in a worker, a cluster benchmark from the producer — is stored
through :func:`record_benchmark_run`, so each carries the same machine description, package
versions and the settings that shape its figures; :func:`load_benchmark_runs` gives them back
in the plain-dict shape :func:`~lewis_tasks.report.bench_report.render_report` draws.
"""

from __future__ import annotations

from typing import Any

from ..domain.benchstats import benchmark_run_row
from ..infra.config import Settings, get_settings


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
    from ..storage.runs import store_benchmark_run

    shown = (settings or get_settings()).redacted()
    row = benchmark_run_row(
        suite=suite, name=name, queue=queue, metrics=metrics, settings=shown, **options
    )
    with session_scope(get_engine()) as session:
        return store_benchmark_run(session, run_id, row)


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


__all__ = ["load_benchmark_runs", "record_benchmark_run"]
