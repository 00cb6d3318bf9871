"""The metrics collector's summary of stored work: scans and batches by status, findings by
severity, the newest few — read in the session it is handed."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from lewis_tasks.storage import http, scans
from lewis_tasks.storage.db import session_scope
from lewis_tasks.storage.summary import stored_work


def test_stored_work_counts_by_status_and_severity_and_lists_the_newest(engine: Engine) -> None:
    # Given two scans, three findings and one HTTP batch
    with session_scope(engine) as s:
        for scan_id in ("s1", "s2"):
            scans.upsert_scan(s, scan_id, request={}, chunks_total=1, ports_total=10)
        scans.upsert_findings(
            s,
            "s1",
            [
                {"host": "127.0.0.1", "port": p, "severity": sev, "title": f"t{p}"}
                for p, sev in ((22, "high"), (80, "high"), (443, "low"))
            ],
        )
        http.save_http_batch(s, "b1", total=3, request={"urls": 3})
    # When the collector's summary is read, with a limit of one
    with session_scope(engine) as s:
        work = stored_work(s, limit=1)
    # Then every row is counted, and only the newest of each kind is listed
    assert sum(work["scans_by_status"].values()) == 2
    assert work["findings_by_severity"] == {"high": 2, "low": 1}
    assert sum(work["batches_by_status"].values()) == 1
    assert len(work["recent_scans"]) == 1 and work["recent_scans"][0]["ports_total"] == 10
    assert [b["id"] for b in work["recent_batches"]] == ["b1"]
    assert work["recent_batches"][0]["total"] == 3
