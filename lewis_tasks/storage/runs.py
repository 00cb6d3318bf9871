"""Records of one-off runs: load tests, profiles, diagnoses and benchmark runs.

They share one shape (an id, a time, JSON detail), so they share :func:`save_run` (an upsert
keyed by the id: the task id or run id, so a rerun overwrites, never duplicates) and
:func:`list_runs`; the named functions below only fix the table.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .models import BenchmarkRunRow, DiagnosisRow, LoadtestRow, ProfileRunRow
from .rows import fetch, upsert

R = TypeVar("R", LoadtestRow, ProfileRunRow, DiagnosisRow, BenchmarkRunRow)


def save_run(session: Session, model: type[R], run_id: str, **fields: Any) -> R:
    """Insert or update the ``model`` row ``run_id`` with ``fields``; returns the stored row."""
    _check_columns(model, fields)
    row = {"id": run_id, **fields}
    upsert(session, model, [row], update_cols=[k for k in row if k != "id"] or ())
    stored = fetch(session, model, run_id)
    assert stored is not None
    return stored


def update_run(session: Session, model: type[R], run_id: str, **fields: Any) -> bool:
    """Change some columns of an existing row (e.g. status and result when a run ends)."""
    _check_columns(model, fields)
    stmt = update(model).where(model.__table__.c.id == run_id).values(fields)
    return bool(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def list_runs(session: Session, model: type[R], *, limit: int = 50, **equal: Any) -> list[R]:
    """Rows of ``model``, newest first, filtered by column equality (``suite="broker"``)."""
    stmt = select(model)
    for name, value in equal.items():
        stmt = stmt.where(model.__table__.c[name] == value)
    return list(session.scalars(stmt.order_by(model.created_at.desc()).limit(limit)))


def save_loadtest(session: Session, run_id: str, **fields: Any) -> LoadtestRow:
    """Insert or update a load test (status, request, result, finished_at)."""
    return save_run(session, LoadtestRow, run_id, **fields)


def save_profile(session: Session, run_id: str, **fields: Any) -> ProfileRunRow:
    """Insert or update a profile (task_name, status, result, pstats_path)."""
    return save_run(session, ProfileRunRow, run_id, **fields)


def save_diagnosis(session: Session, run_id: str, **fields: Any) -> DiagnosisRow:
    """Insert or update a diagnosis (worker, report)."""
    return save_run(session, DiagnosisRow, run_id, **fields)


def save_benchmark_run(session: Session, run_id: str, **fields: Any) -> BenchmarkRunRow:
    """Insert or update a benchmark run (suite, name, queue, metrics, machine, versions, settings)."""
    return save_run(session, BenchmarkRunRow, run_id, **fields)


def store_benchmark_run(session: Session, run_id: str, row: dict[str, Any]) -> dict[str, Any]:
    """Insert or update benchmark run ``run_id`` with ``row``; the run as a dict (its id and
    creation time first)."""
    stored = save_benchmark_run(session, run_id, **row)
    return {"id": run_id, "created_at": stored.created_at.isoformat(), **row}


def get_run(session: Session, model: type[R], run_id: str) -> R | None:
    """One row of ``model`` by id, or None."""
    return fetch(session, model, run_id)


def _check_columns(model: type[R], fields: dict[str, Any]) -> None:
    unknown = set(fields) - set(model.__table__.columns.keys())
    if unknown:
        raise TypeError(f"{model.__tablename__} has no column {', '.join(sorted(unknown))}")


__all__ = [
    "save_run",
    "update_run",
    "list_runs",
    "get_run",
    "save_loadtest",
    "save_profile",
    "save_diagnosis",
    "save_benchmark_run",
    "store_benchmark_run",
]
