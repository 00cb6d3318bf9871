"""Load tests, profiles, diagnoses, benchmark runs: saved by id (a rerun overwrites), listed."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from lewis_tasks.storage import runs
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import BenchmarkRunRow, DiagnosisRow, LoadtestRow, ProfileRunRow


def test_a_rerun_overwrites_instead_of_duplicating(engine: Engine) -> None:
    with session_scope(engine) as s:
        runs.save_loadtest(s, "lt1", status="running", request={"rate": 100})
    with session_scope(engine) as s:
        saved = runs.save_loadtest(s, "lt1", status="done", result={"p50_ms": 1.2})
        assert (saved.status, saved.request, saved.result) == (
            "done",
            {"rate": 100},
            {"p50_ms": 1.2},
        )
        assert s.scalar(select(func.count()).select_from(LoadtestRow)) == 1


def test_profiles_diagnoses_and_benchmarks(engine: Engine) -> None:
    with session_scope(engine) as s:
        runs.save_profile(s, "p1", task_name="lewis.scan.chunk")
        assert runs.update_run(
            s, ProfileRunRow, "p1", status="done", result={"top": []}, pstats_path="/tmp/p1.pstats"
        )
        assert not runs.update_run(s, ProfileRunRow, "nope", status="done")
        runs.save_diagnosis(s, "d1", worker="io@a", report={"ok": True})
        runs.save_benchmark_run(s, "r1", suite="broker", name="rtt", metrics={"p50_ms": 0.9})
        runs.save_benchmark_run(s, "r2", suite="broker", name="drain", queue="io")
        runs.save_benchmark_run(s, "r3", suite="scan", name="full")
    with session_scope(engine) as s:
        profile = runs.get_run(s, ProfileRunRow, "p1")
        assert profile is not None and profile.status == "done"
        assert profile.pstats_path == "/tmp/p1.pstats"
        assert runs.get_run(s, DiagnosisRow, "d1").report == {"ok": True}  # type: ignore[union-attr]
        broker = runs.list_runs(s, BenchmarkRunRow, suite="broker")
        assert [r.id for r in broker] == ["r2", "r1"]
        assert broker[1].to_dict()["metrics"] == {"p50_ms": 0.9}


def test_unknown_columns_are_refused() -> None:
    with pytest.raises(TypeError, match="loadtests has no column colour"):
        runs.save_loadtest(None, "x", colour="blue")  # type: ignore[arg-type]
