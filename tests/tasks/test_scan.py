"""The distributed scan end to end: submit_scan → chunk tasks (io) → merge (cpu) → the database,
through the embedded worker, against real loopback listeners."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import func, select

from lewis_tasks.domain.services import guess_name
from lewis_tasks.domain.targets import format_ports
from lewis_tasks.domain.vulns import find_cves, sample_records
from lewis_tasks.errors import InvalidInput
from lewis_tasks.infra import config
from lewis_tasks.infra.cache import get_cache, reset_cache
from lewis_tasks.infra.database import get_engine
from lewis_tasks.infra.redis_server import free_port
from lewis_tasks.infra.vulnlookup import invalidate_vulnerability_cache
from lewis_tasks.producer import submit
from lewis_tasks.producer.scan import submit_scan
from lewis_tasks.storage import scans, vulns
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.models import FindingRow, ScanChunkRow, ScanPortRow, ScanRow, TargetRow
from tests.support.listeners import (
    CATALOGUE,
    ListenerSet,
    blackhole_port,
    listening_ports,
    running_listeners,
)
from tests.support.wait import wait_for

ADDRESS = "127.88.2.1"  # a loopback address of its own: our listeners + wildcard ones
EXTRA = "1-300"  # mostly closed ports scanned beside the listeners


@contextmanager
def settings_changed(**sections: dict[str, Any]) -> Iterator[config.Settings]:
    """Run with some settings changed (the embedded worker reads the same process settings)."""
    previous = config.get_settings()
    changed = previous
    for section, values in sections.items():
        changed = config.replace_section(changed, section, **values)
    config.set_settings(changed)
    try:
        yield changed
    finally:
        config.set_settings(previous)


@pytest.fixture(scope="module")
def listeners() -> Iterator[ListenerSet]:
    count = len(CATALOGUE) + 6  # every catalogue service once, and six silent listeners
    with running_listeners(
        count, host=ADDRESS, seed=3, banner_share=len(CATALOGUE) / count
    ) as running:
        yield running


@pytest.fixture(scope="module")
def sample_feed(lewis_settings: Any) -> None:
    with session_scope(get_engine()) as session:
        vulns.import_vulnerabilities(session, sample_records())
    invalidate_vulnerability_cache()


@pytest.fixture
def quick(lewis_settings: Any) -> Iterator[config.Settings]:
    # small chunks (several chord parts) and short banner waits (silent listeners)
    with settings_changed(scan={"chunk_ports": 64, "banner_timeout": 1.0}) as s:
        yield s


def spec_for(listeners: ListenerSet) -> str:
    return f"{EXTRA},{format_ports(listeners.ports)}"


def truth(listeners: ListenerSet) -> list[int]:
    scanned = set(range(1, 301)) | set(listeners.ports)
    return sorted(listening_ports(ADDRESS) & scanned)


def snapshot(scan_id: str) -> dict[str, Any]:
    """Every row the scan wrote, as plain values."""

    def rows(model: Any, *where: Any) -> list[tuple[Any, ...]]:
        cols = list(model.__table__.columns)
        stmt = select(*cols).where(*where).order_by(*model.__table__.primary_key.columns)
        return [tuple(r) for r in session.execute(stmt)]

    with session_scope(get_engine()) as session:
        return {
            "scan": rows(ScanRow, ScanRow.id == scan_id),
            "chunks": rows(ScanChunkRow, ScanChunkRow.scan_id == scan_id),
            "ports": rows(ScanPortRow, ScanPortRow.scan_id == scan_id),
            "findings": rows(FindingRow, FindingRow.scan_id == scan_id),
            "targets": rows(TargetRow, TargetRow.value == ADDRESS),
        }


@pytest.fixture(scope="module")
def scanned(request: pytest.FixtureRequest, listeners: ListenerSet, sample_feed: None) -> Any:
    """One finished scan of the listeners, shared by the tests that only read it."""
    worker = request.getfixturevalue("celery_worker")  # noqa: F841  (consumes while we wait)
    with settings_changed(scan={"chunk_ports": 64, "banner_timeout": 1.0}):
        before = truth(listeners)
        handle = submit_scan([ADDRESS], ports=spec_for(listeners))
        report = handle.wait(timeout=90)
        after = truth(listeners)
    assert before == after, "something else opened or closed a port on the test address"
    return handle, report, before


# celery_worker is function-scoped; the module fixture above needs it while it runs
@pytest.fixture(scope="module")
def celery_worker(
    celery_app: Any, celery_includes: Any, celery_worker_pool: Any, celery_worker_parameters: Any
) -> Iterator[Any]:
    from celery.contrib.testing import worker

    with worker.start_worker(celery_app, pool=celery_worker_pool, **celery_worker_parameters) as w:
        yield w


def test_scan_gives_exactly_the_open_set_with_services_and_findings(
    scanned: Any, listeners: ListenerSet
) -> None:
    handle, report, expected = scanned
    # Then the open ports are exactly what listens there, in several chunks
    assert report.status == "done"
    assert report.open_ports() == {ADDRESS: expected}
    assert report.progress.chunks_total > 1
    assert report.progress.chunks_done == report.progress.chunks_total
    # and every listener's service is named as the catalogue says (silent ones unknown)
    host = report.hosts[0]
    by_port = {p["port"]: p for p in host.open_ports}
    for port, item in listeners.listeners.items():
        want = item.service.name if item.service else guess_name(port)  # silent: a guess
        assert by_port[port]["service"] == want, (port, by_port[port])
        if item.service and item.service.version:
            assert by_port[port]["version"] == item.service.version
    # and the findings: the unauthenticated Redis is critical, OpenSSH 8.9p1 cites its CVEs
    findings = {f["port"]: f for f in report.findings}
    redis_port = next(
        p
        for p, i in listeners.listeners.items()
        if i.service and i.service.name == "redis" and i.service.extra.get("auth_required") is False
    )
    assert findings[redis_port]["severity"] == "critical"
    assert report.findings[0]["severity"] == "critical"
    ssh_port = next(
        p for p, i in listeners.listeners.items() if i.service and i.service.version == "8.9p1"
    )
    want_cves = [r.cve_id for r in find_cves("OpenSSH", "8.9p1", sample_records())]
    assert want_cves and findings[ssh_port]["cve_ids"] == want_cves
    assert len(report.findings) == len(expected)  # one per open port


def test_everything_is_persisted_once(scanned: Any, listeners: ListenerSet) -> None:
    handle, report, expected = scanned
    with session_scope(get_engine()) as session:
        progress = scans.scan_progress(session, handle.id)
        ports = session.scalar(
            select(func.count()).select_from(ScanPortRow).where(ScanPortRow.scan_id == handle.id)
        )
        found = session.scalar(
            select(func.count()).select_from(FindingRow).where(FindingRow.scan_id == handle.id)
        )
    assert progress is not None
    assert (
        progress.ports_done
        == progress.ports_total
        == len(set(range(1, 301)) | set(listeners.ports))
    )
    assert progress.open_count == ports == found == len(expected)


def test_merge_twice_or_a_chunk_again_changes_nothing(scanned: Any, celery_worker: Any) -> None:
    handle, _report, _expected = scanned
    before = snapshot(handle.id)
    # When the merge runs again, and a recorded chunk is delivered again
    again = submit("lewis.scan.merge", args=[None], kwargs={"scan_id": handle.id}).wait(timeout=30)
    with session_scope(get_engine()) as session:
        row = session.get(ScanChunkRow, (handle.id, 0))
        assert row is not None
        chunk = {"address": row.host, "hostname": None, "ports": ",".join(row.ports or [])}
    redo = submit("lewis.scan.chunk", args=[handle.id, 0, chunk, {"services": True}]).wait(
        timeout=30
    )
    # Then not one row changed
    assert again["status"] == "done" and redo["recorded"] is False
    assert snapshot(handle.id) == before


def test_a_chunk_run_twice_at_once_is_recorded_once(
    listeners: ListenerSet, celery_worker: Any, quick: Any
) -> None:
    from lewis_tasks.producer.scan import _record

    # Given a planned scan of one chunk that nobody has run yet
    scan_id = f"twice-{time.monotonic_ns()}"
    ports = format_ports(listeners.ports)
    _record(
        scan_id,
        {"targets": [ADDRESS], "ports": ports, "target_rows": []},
        [_chunk(ports, len(listeners.ports))],
    )
    # When two deliveries of it run side by side (both past the "already recorded?" check)
    args = [scan_id, 0, {"address": ADDRESS, "ports": ports}, {"services": False}]
    results = [
        h.wait(timeout=60)
        for h in (submit("lewis.scan.chunk", args=args), submit("lewis.scan.chunk", args=args))
    ]
    # Then exactly one of them recorded it, and the counters moved once
    assert [r["recorded"] for r in results].count(True) == 1
    with session_scope(get_engine()) as session:
        progress = scans.scan_progress(session, scan_id)
    assert progress is not None
    assert (progress.chunks_done, progress.ports_done) == (1, len(listeners.ports))
    assert progress.open_count == len(listeners.ports)


def _chunk(ports: str, count: int) -> Any:
    from lewis_tasks.domain.targets import ScanChunk as Chunk

    return Chunk(ADDRESS, None, ports, count)


def test_progress_is_readable_while_the_scan_runs(
    listeners: ListenerSet, celery_worker: Any, quick: Any
) -> None:
    # Given a scan held to 150 connects/s: 450 ports take ~3 s
    with settings_changed(scan={"chunk_ports": 8192}):
        handle = submit_scan(ADDRESS, ports="1-450", rate=150, services=False)
        seen = []
        while not handle.done():
            seen.append(handle.progress())
            time.sleep(0.05)
    # Then some reading showed it part way, from the live counters of the running chunk
    assert any(p.status == "running" and 0 < p.ports_done < p.ports_total for p in seen), seen[-3:]
    assert all(b.ports_done >= a.ports_done for a, b in zip(seen, seen[1:], strict=False))
    final = handle.progress()
    assert final.status == "done" and final.ports_done == final.ports_total == 450


def test_a_filtered_target_finishes_within_its_budget(celery_worker: Any, quick: Any) -> None:
    with blackhole_port(ADDRESS) as port, settings_changed(scan={"timeout": 0.5, "retries": 1}):
        handle = submit_scan(ADDRESS, ports=f"{port},1-20")
        budget = config.get_settings().tasks.soft_time_limit
        report = handle.wait(timeout=budget * 2)
    assert report.status == "done"
    assert report.hosts[0].filtered == 1 and port not in report.open_ports()[ADDRESS]
    with session_scope(get_engine()) as session:
        chunk = session.get(ScanChunkRow, (handle.id, 0))
    assert chunk is not None and chunk.result["filtered_ports"] == [port]
    assert chunk.result["seconds"] < budget


def test_the_scan_completes_with_the_redis_cache_down(
    listeners: ListenerSet, celery_worker: Any, quick: Any, sample_feed: None
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with settings_changed(cache={"url": dead, "local_lru_size": 0}):
        reset_cache()
        try:
            ssh = next(
                p
                for p, i in listeners.listeners.items()
                if i.service and i.service.version == "8.9p1"
            )
            report = submit_scan(ADDRESS, ports=str(ssh)).wait(timeout=60)
            cache = get_cache()
            assert not cache.available and cache.stats().errors > 0  # it really was down
        finally:
            reset_cache()
    # Then the CVEs still came from the database
    assert report.status == "done"
    assert report.findings[0]["cve_ids"] == [
        r.cve_id for r in find_cves("OpenSSH", "8.9p1", sample_records())
    ]


def test_a_failed_chunk_fails_the_scan_with_the_reason(celery_worker: Any, quick: Any) -> None:
    from lewis_tasks.domain.targets import ScanChunk as Chunk
    from lewis_tasks.producer.base import broker_url
    from lewis_tasks.producer.scan import _send_one

    # Given a scan whose one chunk carries a port spec no worker accepts
    scan_id = f"broken-{time.monotonic_ns()}"
    bad = Chunk(ADDRESS, None, "0", 1)
    request = {"targets": [ADDRESS], "ports": "0", "target_rows": []}
    handle = _send_one(broker_url(), scan_id, request, bad, {"services": False}, None)
    # Then waiting raises the chunk's own error, and the scan is failed with the reason
    with pytest.raises(InvalidInput, match="ports run from 1 to 65535"):
        handle.wait(timeout=60)
    # the errback runs right after the chord is marked failed
    report = wait_for(
        lambda: (r := handle.result()).status == "failed" and r,
        5,
        interval=0.05,
        what="the scan marked failed",
    )
    assert report.status == "failed" and "InvalidInput" in (report.error or "")


def test_dataclass_reports_are_json(scanned: Any) -> None:
    import json

    report = scanned[1]
    data = json.loads(json.dumps(report.to_dict()))
    assert data["scan_id"] == report.scan_id and "target_rows" not in data["request"]
    assert dataclasses.is_dataclass(report)


def test_a_rate_limited_host_scans_its_chunks_one_after_another(
    celery_worker: Any, quick: Any
) -> None:
    # Given 300 ports in chunks of 100 at 500 connects/s (the bucket holds 50 at the start)
    with settings_changed(scan={"chunk_ports": 100}):
        began = time.monotonic()
        handle = submit_scan(ADDRESS, ports="1-300", rate=500, services=False)
        report = handle.wait(timeout=60)
        took = time.monotonic() - began
    assert report.status == "done" and report.progress.chunks_total == 3
    # Then the rate held across the chunks (no faster than the bucket allows) …
    assert took >= (300 - 50) / 500
    # … and each chunk started only after the one before it had finished (a chain per host)
    with session_scope(get_engine()) as session:
        rows = sorted(
            session.scalars(select(ScanChunkRow).where(ScanChunkRow.scan_id == handle.id)),
            key=lambda r: r.chunk_index,
        )
    for before, after in zip(rows, rows[1:], strict=False):
        assert before.finished_at is not None and after.finished_at is not None
        started = after.finished_at.timestamp() - after.result["seconds"]
        assert started >= before.finished_at.timestamp() - 0.05


def test_a_hostname_target_is_resolved_and_named(celery_worker: Any, quick: Any) -> None:
    with running_listeners(2, host="127.0.0.1", seed=13, banner_share=0) as local:
        report = submit_scan("localhost", ports=format_ports(local.ports), services=False).wait(
            timeout=60
        )
    hosts = {h.address: h for h in report.hosts}
    assert "127.0.0.1" in hosts and hosts["127.0.0.1"].hostname == "localhost"
    assert report.open_ports()["127.0.0.1"] == local.ports
    assert all(f["host"] in hosts for f in report.findings)
