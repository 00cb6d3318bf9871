"""Scans: created once, chunks recorded once (counters move once), ports and findings upserted."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from lewis_tasks.errors import StorageError
from lewis_tasks.storage import scans, targets
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import ScanChunkRow, ScanPortRow

PLAN = [
    {"chunk_index": i, "host": "127.0.0.1", "ports": [i * 100 + 1, i * 100 + 100]} for i in range(3)
]


def _open(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "state": "open", **extra}


def _start(engine: Engine, scan_id: str = "s1") -> None:
    with session_scope(engine) as s:
        assert scans.upsert_scan(
            s,
            scan_id,
            request={"targets": ["127.0.0.1"]},
            chunks_total=3,
            ports_total=300,
            chunks=PLAN,
        )


def test_upsert_scan_creates_once_and_keeps_the_first_plan(engine: Engine) -> None:
    _start(engine)
    with session_scope(engine) as s:
        assert not scans.upsert_scan(
            s, "s1", request={"other": 1}, chunks_total=9, chunks=[{"chunk_index": 7}]
        )
    with session_scope(engine) as s:
        scan = scans.get_scan(s, "s1")
        assert (
            scan is not None
            and scan.chunks_total == 3
            and scan.request == {"targets": ["127.0.0.1"]}
        )
        assert scans.pending_chunks(s, "s1") == [0, 1, 2]


def test_a_chunk_is_pending_until_recorded_and_a_missing_scan_says_so(engine: Engine) -> None:
    # Given a scan of three planned chunks
    _start(engine)
    with session_scope(engine) as s:
        # Then its chunks are pending, an index outside its plan is not, and another scan is
        # not there at all
        assert [scans.chunk_pending(s, "s1", i) for i in (0, 1, 2, 3)] == [True, True, True, False]
        assert scans.chunk_pending(s, "nope", 0) is None
        assert scans.scan_exists(s, "s1") and not scans.scan_exists(s, "nope")
    # And once chunk 1 is recorded, it is no longer pending
    with session_scope(engine) as s:
        assert scans.record_chunk(s, "s1", 1, {"open": []}, ports_scanned=100)
    with session_scope(engine) as s:
        assert [scans.chunk_pending(s, "s1", i) for i in (0, 1, 2)] == [True, False, True]


def test_a_chunk_recorded_twice_counts_once(engine: Engine) -> None:
    _start(engine)
    result = {"open": [22, 80]}
    ports = [_open(22, service="ssh"), _open(80)]
    # When the same chunk is recorded twice (a redelivered task)
    with session_scope(engine) as s:
        assert scans.record_chunk(
            s, "s1", 0, result, ports_scanned=100, open_ports=ports, task_id="t-a"
        )
    with session_scope(engine) as s:
        assert not scans.record_chunk(
            s, "s1", 0, result, ports_scanned=100, open_ports=ports, task_id="t-b"
        )
    # Then the counters moved once, and the first run's record stands
    with session_scope(engine) as s:
        progress = scans.scan_progress(s, "s1")
        assert progress is not None
        assert (progress.chunks_done, progress.ports_done, progress.open_count) == (1, 100, 2)
        assert progress.to_dict()["fraction"] == pytest.approx(1 / 3)
        chunk = s.get(ScanChunkRow, ("s1", 0))
        assert chunk is not None and chunk.task_id == "t-a" and chunk.status == "done"
        assert chunk.finished_at is not None and chunk.finished_at.tzinfo is not None
        assert scans.pending_chunks(s, "s1") == [1, 2]
        assert s.scalar(select(func.count()).select_from(ScanPortRow)) == 2


def test_concurrent_duplicate_chunks_count_once(engine: Engine) -> None:
    # Given one chunk delivered to eight workers at the same moment
    _start(engine)
    barrier = threading.Barrier(8)
    outcomes: list[bool] = []

    def record() -> None:
        barrier.wait()
        with session_scope(engine) as s:
            outcomes.append(
                scans.record_chunk(s, "s1", 1, {}, ports_scanned=100, open_ports=[_open(111)])
            )

    threads = [threading.Thread(target=record) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then exactly one of them recorded it
    assert sorted(outcomes) == [False] * 7 + [True]
    with session_scope(engine) as s:
        progress = scans.scan_progress(s, "s1")
        assert progress is not None and (progress.chunks_done, progress.ports_done) == (1, 100)


def test_chunk_of_an_unknown_scan_is_a_storage_error(engine: Engine) -> None:
    with pytest.raises(StorageError, match="(?i)foreign key"), session_scope(engine) as s:
        scans.record_chunk(s, "missing", 0, {}, ports_scanned=1)


def test_ports_and_findings_upsert_by_their_keys(engine: Engine) -> None:
    _start(engine)
    with session_scope(engine) as s:
        assert scans.upsert_ports(s, "s1", [_open(22), _open(6379)]) == 2
        # identification later fills in the service; an unchanged port is not rewritten
        assert (
            scans.upsert_ports(
                s, "s1", [_open(22, service="ssh", product="OpenSSH", version="9.6"), _open(6379)]
            )
            == 1
        )
        finding = {
            "host": "127.0.0.1",
            "port": 6379,
            "title": "Redis without AUTH",
            "severity": "critical",
            "score": 9.8,
            "service": "redis",
        }
        assert scans.upsert_findings(s, "s1", [finding]) == 1
        assert scans.upsert_findings(s, "s1", [finding]) == 0
        assert scans.upsert_findings(s, "s1", [{**finding, "score": 10.0}]) == 1
        assert (
            scans.upsert_findings(
                s, "s1", [{"host": "127.0.0.1", "title": "host note", "severity": "info"}]
            )
            == 1
        )
    with session_scope(engine) as s:
        ssh = scans.list_scan_ports(s, "s1")[0]
        assert (ssh.port, ssh.service, ssh.product, ssh.version) == (22, "ssh", "OpenSSH", "9.6")
        found = scans.list_findings(s, scan_id="s1")
        assert [(f.title, f.score, f.port) for f in found] == [
            ("Redis without AUTH", 10.0, 6379),
            ("host note", None, 0),
        ]
        assert [f.title for f in scans.list_findings(s, severities=["info"])] == ["host note"]
        assert found[0].to_dict()["cve_ids"] == []


def test_status_and_listing(engine: Engine) -> None:
    for scan_id in ("a", "b", "c"):
        _start(engine, scan_id)
    with session_scope(engine) as s:
        assert scans.set_scan_status(s, "b", "done", summary={"open": 0})
        assert not scans.set_scan_status(s, "nope", "done")
    with session_scope(engine) as s:
        first = scans.get_scan(s, "b")
        assert first is not None and first.finished_at is not None
        stamp = first.finished_at
        scans.set_scan_status(s, "b", "done")  # a rerun callback does not move the end time
    with session_scope(engine) as s:
        again = scans.get_scan(s, "b")
        assert again is not None and again.finished_at == stamp and again.summary == {"open": 0}
        assert [x.id for x in scans.list_scans(s)] == ["c", "b", "a"]
        assert [x.id for x in scans.list_scans(s, status="done")] == ["b"]
        assert scans.get_scan(s, "b").to_dict()["finished_at"] == stamp.isoformat()  # type: ignore[union-attr]


def test_targets_are_recorded_once_and_filtered_by_status(engine: Engine) -> None:
    with session_scope(engine) as s:
        assert targets.upsert_targets(s, [("127.0.0.1", "ip"), ("localhost", "hostname")]) == 2
        assert targets.upsert_targets(s, [("127.0.0.1", "ip")]) == 0
        assert targets.set_target_status(s, "localhost", "retired")
        assert targets.mark_scanned(s, ["127.0.0.1"]) == 1
    with session_scope(engine) as s:
        active = targets.list_targets(s, status="active")
        assert [t.value for t in active] == ["127.0.0.1"] and active[0].last_scanned is not None
        assert [t.value for t in targets.list_targets(s)] == ["127.0.0.1", "localhost"]
