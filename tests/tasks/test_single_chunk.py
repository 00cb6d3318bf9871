"""A job that fits in one chunk runs as ONE task that merges in place (no chord, no merge task):
the same report and rows as the chord gives, and idempotent under redelivery — for scans and
for HTTP batches, through the embedded worker, against real loopback listeners and servers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from lewis_tasks.domain.targets import format_ports
from lewis_tasks.infra.database import get_engine
from lewis_tasks.producer import submit
from lewis_tasks.producer.http import submit_http_batch
from lewis_tasks.producer.scan import ScanHandle, submit_scan
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import ScanChunkRow
from tests.support.httpservers import ServerThread, free_port
from tests.support.listeners import CATALOGUE, ListenerSet, running_listeners
from tests.tasks.test_scan import sample_feed, settings_changed, snapshot  # noqa: F401

ADDRESS = "127.88.2.7"  # a loopback address of its own
WAIT = 60


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    with running_listeners(len(CATALOGUE), host=ADDRESS, seed=5, banner_share=1.0) as running:
        yield running


@pytest.fixture(scope="module")
def celery_worker(
    celery_app: Any, celery_includes: Any, celery_worker_pool: Any, celery_worker_parameters: Any
) -> Iterator[Any]:
    from celery.contrib.testing import worker

    with worker.start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


def _scan(listeners: ListenerSet, chunk_ports: int) -> tuple[ScanHandle, Any]:
    with settings_changed(scan={"chunk_ports": chunk_ports, "banner_timeout": 1.0}):
        handle = submit_scan([ADDRESS], ports=f"1-40,{format_ports(listeners.ports)}")
        return handle, handle.wait(timeout=WAIT)


def _chunk_task_ids(scan_id: str) -> list[str | None]:
    with session_scope(get_engine()) as session:
        return [
            r.task_id
            for r in session.scalars(
                select(ScanChunkRow)
                .where(ScanChunkRow.scan_id == scan_id)
                .order_by(ScanChunkRow.chunk_index)
            )
        ]


def _comparable(report: Any) -> dict[str, Any]:
    """The report without what differs between any two scans (ids, times, chunk counts)."""
    data = report.to_dict()
    return {k: data[k] for k in ("status", "summary", "hosts", "findings", "error")}


@pytest.fixture(scope="module")
def both(listeners: ListenerSet, sample_feed: None, celery_worker: Any) -> Any:  # noqa: F811
    single = _scan(listeners, chunk_ports=4096)
    chorded = _scan(listeners, chunk_ports=8)
    return single, chorded


def test_a_one_chunk_scan_runs_as_one_task_and_merges_in_place(both: Any) -> None:
    (handle, report), _ = both
    # Then the scan is done, of one chunk, and the task that merged it is that chunk's own
    assert report.status == "done" and report.progress.chunks_total == 1
    assert _chunk_task_ids(handle.id) == [handle.merge_id]


def test_a_big_scan_keeps_its_chord(both: Any) -> None:
    _, (handle, report) = both
    ids = _chunk_task_ids(handle.id)
    assert report.status == "done" and len(ids) == report.progress.chunks_total > 1
    assert handle.merge_id not in ids  # the chord's callback merged, not a chunk


def test_a_workers_chunks_launch_their_connects_in_the_processs_turns(
    listeners: ListenerSet, celery_worker: Any
) -> None:
    from lewis_tasks.infra.runtime import runtime

    # Given the embedded worker (it runs in this process, so it shares this runtime)
    before = runtime().scan.turns.taken
    # When it scans a chord of chunks
    handle, report = _scan(listeners, chunk_ports=8)
    # Then the scan is exact, and its connect loops took the process's turns to launch
    assert report.status == "done" and report.progress.chunks_total > 1
    assert report.open_ports() == {ADDRESS: listeners.ports}
    assert runtime().scan.turns.taken > before


def test_the_one_chunk_scan_reports_and_stores_what_the_chord_does(
    both: Any, listeners: ListenerSet
) -> None:
    (single, one), (chorded, many) = both
    assert one.open_ports() == many.open_ports() == {ADDRESS: listeners.ports}
    assert _comparable(one) == _comparable(many)

    def rows(scan_id: str) -> dict[str, Any]:  # every row without its ids and times
        snap = snapshot(scan_id)
        bare = [
            [
                tuple(v for v in r if not hasattr(v, "isoformat") and v != scan_id)
                for r in snap[kind]
            ]
            for kind in ("ports", "findings")
        ]
        return {"ports": bare[0], "findings": sorted(r[1:] for r in bare[1])}  # [0]: row id

    assert rows(single.id) == rows(chorded.id)


def test_the_one_chunk_task_delivered_again_changes_nothing(both: Any) -> None:
    (handle, _report), _ = both
    before = snapshot(handle.id)
    with session_scope(get_engine()) as session:
        row = session.get(ScanChunkRow, (handle.id, 0))
        assert row is not None
        chunk = {"address": row.host, "hostname": None, "ports": ",".join(row.ports or [])}
    # When the single task is delivered again (it merges again, in place)
    again = submit(
        "lewis.scan.chunk", args=[handle.id, 0, chunk, {"services": True, "merge": True}]
    ).wait(timeout=WAIT)
    # Then it answers with the merged scan, and not one row changed
    assert again["status"] == "done" and again["scan_id"] == handle.id
    assert snapshot(handle.id) == before


def test_a_redelivery_after_the_chunk_was_recorded_completes_the_scan(
    listeners: ListenerSet, celery_worker: Any
) -> None:
    from lewis_tasks.domain.targets import ScanChunk as Chunk
    from lewis_tasks.producer.scan import _record

    # Given a one-chunk scan whose task recorded its chunk and died before merging
    scan_id = f"half-{time.monotonic_ns()}"
    ports = format_ports(listeners.ports)
    _record(
        scan_id,
        {"targets": [ADDRESS], "ports": ports, "target_rows": []},
        [Chunk(ADDRESS, None, ports, len(listeners.ports))],
    )
    args = [scan_id, 0, {"address": ADDRESS, "ports": ports}, {"services": False}]
    assert submit("lewis.scan.chunk", args=args).wait(timeout=WAIT)["recorded"] is True
    assert ScanHandle(scan_id, celery_worker.app).progress().status == "running"
    # When it is delivered again, now with its merge
    merged = submit("lewis.scan.chunk", args=[*args[:3], {"services": False, "merge": True}]).wait(
        timeout=WAIT
    )
    # Then the scan is done, with one finding per open port, recorded once
    report = ScanHandle(scan_id, celery_worker.app).result()
    assert merged["status"] == "done" and report.status == "done"
    assert report.open_ports() == {ADDRESS: listeners.ports}
    assert len(report.findings) == len(listeners.ports) == merged["open"]
    assert report.progress.chunks_done == 1


def test_the_one_chunk_scan_brings_its_stored_report_and_frees_its_slot(
    both: Any, lewis_settings: Any
) -> None:
    from lewis_tasks.infra.redis_client import get_redis
    from lewis_tasks.infra.runningscans import running_scans
    from lewis_tasks.producer.scanreport import load_scan_report

    (handle, report), (chorded, _) = both
    # Then the report came with the task's result, and it is the one stored
    assert handle._report is report
    stored = load_scan_report(handle.id)
    assert stored is not None and stored.to_dict() == report.to_dict()
    # And neither scan holds a running slot any more
    assert not {handle.id, chorded.id} & set(
        running_scans(get_redis(), lewis_settings.broker.result_expires)
    )


def test_a_one_chunk_scan_cancelled_before_a_worker_took_it_ends_cancelled(
    listeners: ListenerSet, celery_worker: Any, lewis_settings: Any
) -> None:
    from lewis_tasks.infra.redis_client import get_redis
    from lewis_tasks.infra.runningscans import claim_scan_slot, running_scans
    from lewis_tasks.producer.scan import cancel_scan
    from lewis_tasks.producer.scanreport import load_scan_report

    # Given a one-chunk scan submitted (it holds a slot) that no worker has recorded yet
    scan_id = f"early-{time.monotonic_ns()}"
    lifetime = lewis_settings.broker.result_expires
    assert claim_scan_slot(get_redis(), scan_id, 1000, lifetime)[0]
    assert load_scan_report(scan_id) is None
    # When it is cancelled, then its task is delivered anyway (the revoke missed it)
    assert cancel_scan(scan_id) is True
    assert scan_id not in running_scans(get_redis(), lifetime)
    ports = format_ports(listeners.ports)
    record = {
        "request": {"targets": [ADDRESS], "ports": ports, "target_rows": []},
        "chunks": [{"chunk_index": 0, "host": ADDRESS, "ports": ports.split(",")}],
        "ports_total": len(listeners.ports),
        "created_at": time.time(),
    }
    options = {"services": False, "merge": True, "record": record}
    result = submit(
        "lewis.scan.chunk", args=[scan_id, 0, {"address": ADDRESS, "ports": ports}, options]
    ).wait(timeout=WAIT)
    # Then it records the scan as cancelled, without scanning, and says so
    assert result["status"] == "cancelled" and result["report"]["status"] == "cancelled"
    stored = load_scan_report(scan_id)
    assert stored is not None and stored.status == "cancelled"
    assert stored.progress.ports_done == 0 and stored.progress.chunks_total == 1


def test_a_chord_scan_cancelled_before_a_worker_took_it_ends_cancelled(
    listeners: ListenerSet, celery_worker: Any, lewis_settings: Any
) -> None:
    from celery.worker import state

    from lewis_tasks.infra.redis_client import get_redis
    from lewis_tasks.infra.runningscans import claim_scan_slot, running_scans, save_plan
    from lewis_tasks.producer.scan import cancel_scan, chunk_task_id
    from lewis_tasks.producer.scanreport import load_scan_report

    # Given a scan of two chunks sent without the database: its plan waits in Redis, it holds
    # a slot, and no worker has recorded it yet
    scan_id = f"early-chord-{time.monotonic_ns()}"
    lifetime = lewis_settings.broker.result_expires
    halves = [
        listeners.ports[: len(listeners.ports) // 2],
        listeners.ports[len(listeners.ports) // 2 :],
    ]
    specs = [format_ports(h) for h in halves]
    record = {
        "request": {"targets": [ADDRESS], "ports": ",".join(specs), "target_rows": []},
        "chunks": [
            {"chunk_index": i, "host": ADDRESS, "ports": spec.split(",")}
            for i, spec in enumerate(specs)
        ],
        "ports_total": len(listeners.ports),
        "created_at": time.time(),
    }
    assert claim_scan_slot(get_redis(), scan_id, 1000, lifetime)[0]
    save_plan(get_redis(), scan_id, record, len(specs), lifetime)
    assert load_scan_report(scan_id) is None
    # When it is cancelled
    assert cancel_scan(scan_id) is True
    assert scan_id not in running_scans(get_redis(), lifetime)
    # Then every one of its chunks is revoked, the plan's count of them, not only the first
    wanted = {chunk_task_id(scan_id, i) for i in range(len(specs))}
    deadline = time.monotonic() + WAIT
    while not wanted <= set(state.revoked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert wanted <= set(state.revoked)
    # And chunks delivered anyway (the revoke missed them) record it cancelled, scanning nothing
    for i, spec in enumerate(specs):
        options = {"services": False, "planned": True}
        result = submit(
            "lewis.scan.chunk", args=[scan_id, i, {"address": ADDRESS, "ports": spec}, options]
        ).wait(timeout=WAIT)
        assert result["cancelled"] is True and result["recorded"] is False
    stored = load_scan_report(scan_id)
    assert stored is not None and stored.status == "cancelled"
    assert stored.progress.ports_done == 0 and stored.progress.chunks_total == len(specs)


# ---------------------------------------------------------------- HTTP batches


@pytest.fixture(scope="module")
def servers(serve: ServerThread) -> ServerThread:
    serve.start("app", "127.0.0.1")
    return serve


def _urls(servers: ServerThread) -> list[Any]:
    base = servers.servers[0].url
    return [
        f"{base}/bytes/512",
        f"{base}/status/404",
        f"{base}/redirect/2",
        f"http://127.0.0.1:{free_port('127.0.0.1')}/",
        "not a url",
        {"url": f"{base}/echo", "method": "POST", "body": "hi"},
    ]


def _batch(urls: list[Any], chunk_size: int) -> tuple[Any, dict[str, Any]]:
    with settings_changed(http={"chunk_size": chunk_size}):
        handle = submit_http_batch(urls)
        return handle, handle.wait(timeout=WAIT)


_COUNTS = ("total", "done", "ok", "failed", "statuses", "errors", "bytes")
_ROW = (
    "index",
    "url",
    "final_url",
    "method",
    "status",
    "error_class",
    "bytes",
    "sha256",
    "truncated",
)


def test_a_one_chunk_batch_is_one_task_with_the_chords_summary_and_rows(
    celery_worker: Any, servers: ServerThread
) -> None:
    urls = _urls(servers)
    single, one = _batch(urls, chunk_size=100)
    chorded, many = _batch(urls, chunk_size=2)
    # Then the one-chunk batch was one task (its part is the task that answered) …
    assert single.chunks == 1 and single.part_ids == [single.task_id] and one["chunks"] == 1
    assert chorded.chunks == 3 == many["chunks"] and chorded.task_id not in chorded.part_ids
    # … with the chord's counts and the same rows
    assert {k: one[k] for k in _COUNTS} == {k: many[k] for k in _COUNTS}
    assert [{k: r[k] for k in _ROW} for r in single.result()] == [
        {k: r[k] for k in _ROW} for r in chorded.result()
    ]
    assert single.progress()["status"] == "done"


def test_the_one_chunk_batch_delivered_again_stores_nothing_new(
    celery_worker: Any, servers: ServerThread
) -> None:
    urls = _urls(servers)
    handle, summary = _batch(urls, chunk_size=100)
    rows = handle.result()
    # When its one task is delivered again
    again = submit(
        "lewis.http.fetch_chunk", args=[handle.id, 0, urls, {"total": len(urls), "merge": True}]
    ).wait(timeout=WAIT)
    # Then it closes the batch with the same counts, and no row is stored twice
    assert {k: again[k] for k in _COUNTS} == {k: summary[k] for k in _COUNTS}
    assert len(handle.result()) == len(rows) == len(urls)
    assert handle.progress() == {
        "total": len(urls),
        "done": len(urls),
        "ok": summary["ok"],
        "failed": summary["failed"],
        "status": "done",
    }


def test_a_small_one_chunk_batch_brings_its_stored_rows_along(
    celery_worker: Any, servers: ServerThread
) -> None:
    from lewis_tasks.producer.http import HttpBatchHandle

    urls = _urls(servers)
    handle, _summary = _batch(urls, chunk_size=100)
    # Then the rows came with the result (no "rows" in the summary itself) …
    assert handle._rows is not None and "rows" not in _summary
    # … and every page of them is what the database holds
    stored = HttpBatchHandle(handle.id, handle.task_id, handle.part_ids, handle.app)
    for page in ({}, {"failed_only": True}, {"offset": 2, "limit": 3}):
        assert handle.result(**page) == stored.result(**page), page
    assert len(handle.result()) == len(urls) and handle.result(failed_only=True)


def test_a_bigger_one_chunk_batch_leaves_its_rows_to_the_database(
    celery_worker: Any, servers: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lewis_tasks.tasks import http as http_tasks

    monkeypatch.setattr(http_tasks, "ROWS_IN_RESULT", 3)  # the embedded worker's own module
    urls = _urls(servers)
    handle, summary = _batch(urls, chunk_size=100)
    assert handle._rows is None and summary["chunks"] == 1
    assert [r["index"] for r in handle.result()] == list(range(len(urls)))
