"""A scan sent without the database is recorded from its plan by its first chunks (issue 18.4):
a process's chunks take turns, so one writes it and the rest find it recorded.

Real Redis (the plan) and SQLite (the scan's rows); the chunks' first step runs in threads of
this process, as an io worker's pool runs them.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from lewis_tasks.infra.database import get_engine
from lewis_tasks.infra.redis_client import get_redis
from lewis_tasks.infra.runningscans import plan_to_record, save_plan
from lewis_tasks.storage import scans
from lewis_tasks.storage.db import session_scope
from lewis_tasks.tasks import scan as scan_tasks

CHUNKS = 8


def _plan(scan_id: str) -> dict[str, Any]:
    return {
        "request": {"targets": ["127.0.0.1"], "ports": "1-8192", "target_rows": []},
        "chunks": [
            {"chunk_index": i, "host": "127.0.0.1", "ports": [f"{1 + 1024 * i}-{1024 * (i + 1)}"]}
            for i in range(CHUNKS)
        ],
        "ports_total": 8192,
        "created_at": time.time(),
    }


def test_a_processs_first_chunks_record_a_planned_scan_once(
    lewis_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a scan whose plan waits in Redis, and a database write that takes a while (the
    # others arrive while the first is still writing)
    scan_id = f"planned-{time.monotonic_ns()}"
    save_plan(get_redis(), scan_id, _plan(scan_id), CHUNKS, 600)
    writes: list[str] = []
    record_scan = scan_tasks._record_scan

    def slow_record(sid: Any, record: Any) -> None:
        writes.append(sid)
        time.sleep(0.2)
        record_scan(sid, record)

    monkeypatch.setattr(scan_tasks, "_record_scan", slow_record)
    # When all of its chunks start at once in this process
    start = threading.Barrier(CHUNKS)
    errors: list[BaseException] = []

    def first_step() -> None:
        start.wait()
        try:
            scan_tasks._record_planned(scan_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first_step) for _ in range(CHUNKS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    # Then one of them wrote the scan and its plan, and the others found it recorded
    assert not errors
    assert writes == [scan_id]
    assert plan_to_record(get_redis(), scan_id) is None
    with session_scope(get_engine()) as session:
        assert scans.pending_chunks(session, scan_id) == list(range(CHUNKS))
        stored = scans.get_scan(session, scan_id)
        assert stored is not None and stored.chunks_total == CHUNKS


def test_a_chunk_of_another_process_finds_the_scan_written_and_only_marks_it(
    lewis_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a planned scan that another process's chunk has written but not yet marked
    scan_id = f"planned-{time.monotonic_ns()}"
    plan = _plan(scan_id)
    save_plan(get_redis(), scan_id, plan, CHUNKS, 600)
    scan_tasks._record_scan(scan_id, plan)
    assert plan_to_record(get_redis(), scan_id) is not None
    writes: list[str] = []
    monkeypatch.setattr(scan_tasks, "_record_scan", lambda sid, _record: writes.append(sid))
    # When a chunk of this process starts
    scan_tasks._record_planned(scan_id)
    # Then it writes nothing (no wait for the write lock), and marks the plan recorded
    assert writes == []
    assert plan_to_record(get_redis(), scan_id) is None
